//! The README's configuration tables stay in step with the binaries.

#[test]
fn readme_documents_every_flag_of_every_binary() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    for bin in ["ws-gateway", "wechat-callback", "wechat-sim"] {
        let (status, help, _) = e2e::process::run_to_end(&e2e::bin_path(bin), &["--help"], &[]);
        assert!(status.success());
        let flags: Vec<&str> = help
            .split_whitespace()
            .filter(|w| {
                w.starts_with("--")
                    && w.len() > 2
                    && w[2..].bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
            })
            .filter(|w| !matches!(*w, "--help" | "--version"))
            .collect();
        assert!(flags.len() > 5, "{bin}: no flags parsed from --help");
        for flag in flags {
            assert!(
                readme.contains(&format!("`{flag}`")),
                "README lacks {bin} {flag}"
            );
        }
    }
}
