//! The notify bus, both ends.
//!
//! Server side: the input is fed to a `LineBuffer` in chunks whose sizes
//! come from the input, as `ws-gateway` reads its socket; every complete
//! line goes to `ScanNotify::parse`, and the last unterminated line too at
//! EOF. Client side: every line also goes to `Answer::parse`.
//!
//! Header: byte 0 picks the line limit (bit 7 set: the real
//! `MAX_LINE_BYTES`, else 0..=127 so `TooLong` is reached), byte 1 seeds
//! the chunk sizes. Invariants: no line longer than the limit, the same
//! lines as the reference `split_line`, a parsed request written back with
//! `to_line` is one line that parses back equal, and an answer's error
//! code and a `scanned` answer read back as what they say.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::bus::{
    Answer, BusError, Line, LineBuffer, LineRef, MAX_LINE_BYTES, MAX_USER_AGENT_CHARS, ScanNotify,
    split_line,
};

/// The gateway's read size.
const READ_CHUNK: usize = 8 * 1024;

fn check_request(line: &[u8]) {
    match ScanNotify::parse(line) {
        Ok(n) => {
            let out = n.to_line();
            assert_eq!(out.last(), Some(&b'\n'));
            assert_eq!(
                out.iter().filter(|&&b| b == b'\n').count(),
                1,
                "to_line is one line"
            );
            let back = ScanNotify::parse(&out[..out.len() - 1]).expect("to_line parses back");
            assert_eq!(back, n);
            // What the gateway answers a `scanned` line with, fed this
            // request's strings.
            let ua = n.ticket.as_deref().unwrap_or_default();
            let answer = Answer::scanned_line(&n.nickname, ua);
            assert_eq!(answer.iter().filter(|&&b| b == b'\n').count(), 1);
            let info = Answer::parse(&answer[..answer.len() - 1]).expect("scanned answer is ok");
            assert_eq!(info.ip.as_deref(), Some(n.nickname.as_str()));
            let want: String = ua.chars().take(MAX_USER_AGENT_CHARS).collect();
            assert_eq!(info.user_agent, Some(want));
        }
        Err(e) => assert!(
            matches!(e, BusError::BadJson | BusError::UnknownType),
            "parse gave {e:?}"
        ),
    }
}

fn check_answer(line: &[u8]) {
    if let Err(Some(e)) = Answer::parse(line) {
        let again = e.answer_line();
        assert_eq!(Answer::parse(&again[..again.len() - 1]), Err(Some(e)));
        assert_eq!(BusError::from_code(e.code()), Some(e));
    }
}

fn check_line(line: &[u8], max: usize) {
    assert!(line.len() <= max, "a line of {} > max {max}", line.len());
    assert!(!line.contains(&b'\n'));
    // Only one `\r` before the newline is dropped: `\r\r\n` leaves `\r`.
    check_request(line);
    check_answer(line);
}

fuzz_target!(|data: &[u8]| {
    let (max, seed, body) = match data {
        [a, b, rest @ ..] => {
            let max = if a & 0x80 != 0 {
                MAX_LINE_BYTES
            } else {
                usize::from(a & 0x7f)
            };
            (max, *b, rest)
        }
        _ => return,
    };
    let mut lines = LineBuffer::new(READ_CHUNK, max);
    // The reference splitter, fed the same chunks.
    let (mut ref_buf, mut ref_scanned) = (Vec::new(), 0usize);
    let mut state = u32::from(seed) | 0x100;
    let mut at = 0;
    let mut done = false;
    while at < body.len() && !done {
        // xorshift32: chunk sizes 1..=64, or a whole read now and then.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = if state % 8 == 0 {
            READ_CHUNK
        } else {
            1 + (state as usize >> 3) % 64
        };
        let chunk = &body[at..(at + size).min(body.len())];
        at += chunk.len();
        lines.read_target(READ_CHUNK / 4).extend_from_slice(chunk);
        ref_buf.extend_from_slice(chunk);
        loop {
            let ours = match lines.next_line() {
                None => None,
                Some(LineRef::TooLong) => Some(None),
                Some(LineRef::Complete(l)) => {
                    check_line(l, max);
                    Some(Some(l.to_vec()))
                }
            };
            let reference = match split_line(&mut ref_buf, &mut ref_scanned, max) {
                None => None,
                Some(Line::TooLong) => Some(None),
                Some(Line::Complete(l)) => Some(Some(l)),
            };
            assert_eq!(ours, reference, "LineBuffer and split_line disagree");
            match ours {
                None => break,
                // The gateway answers line_too_long and closes.
                Some(None) => {
                    done = true;
                    break;
                }
                Some(Some(_)) => {}
            }
        }
    }
    if !done {
        // EOF: a last line without its newline is answered too.
        let rest = lines.remainder();
        assert!(rest.len() <= max, "remainder of {} > max {max}", rest.len());
        assert!(!rest.contains(&b'\n'));
        assert_eq!(rest, &ref_buf[..]);
        if !rest.is_empty() {
            check_request(rest);
            check_answer(rest);
        }
    }
});
