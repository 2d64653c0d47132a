#!/usr/bin/env python3
"""Regenerates the README's configuration tables from each binary's --help.

Usage: scripts/readme-flags.py [BIN_DIR]   (default: target/debug)
The tables sit under the headings `### ws-gateway`, `### wechat-callback`
and `### wechat-sim (development and tests)`; everything else in the README
is left as it is. tests/e2e/docs.rs checks that every flag is documented.
"""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN_DIR = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target" / "debug"
SECTIONS = {
    "ws-gateway": "### ws-gateway",
    "wechat-callback": "### wechat-callback",
    "wechat-sim": "### wechat-sim (development and tests)",
}
HEADER = "| flag | env | TOML key | default | meaning |\n|---|---|---|---|---|\n"


def options(binary):
    help_text = subprocess.run([str(BIN_DIR / binary), "--help"], capture_output=True,
                               text=True, check=True).stdout
    body = help_text.split("Options:", 1)[1]
    blocks = re.split(r"\n(?=\s{2,6}(?:-\w, )?--[a-z])", "\n" + body)
    for block in blocks:
        block = block.strip("\n")
        m = re.match(r"\s*(?:-\w, )?(--[a-z-]+)(?: <([^>]+)>)?", block)
        if not m or m.group(1) in ("--help", "--version"):
            continue
        flag, value = m.group(1), m.group(2)
        rest = block[m.end():]
        rest = re.sub(r"\n\s*Possible values:.*?(?=\n\s*\[env|\Z)", "", rest, flags=re.S)
        env = re.search(r"\[env: ([A-Z_]+)=?[^\]]*\]", rest)
        default = re.search(r"\[default: ((?:\"[^\"]*\")|[^\]]*)\]", rest)
        text = re.sub(r"\[(env|default|possible values): [^\]]*\]", "", rest)
        text = " ".join(text.split()).rstrip(".")
        yield flag, value, env.group(1) if env else "", default.group(1) if default else "", text


def table(binary):
    rows = []
    for flag, value, env, default, text in options(binary):
        key = "—" if flag == "--config" else flag[2:].replace("-", "_")
        shown = f"`{flag}`" + (f" `<{value}>`" if value else "")
        default = f"`{default}`" if default else ""
        env = f"`{env}`" if env else ""
        key = key if key == "—" else f"`{key}`"
        rows.append(f"| {shown} | {env} | {key} | {default} | {text.replace('|', '&#124;')} |")
    return HEADER + "\n".join(rows) + "\n"


def main():
    readme = (ROOT / "README.md").read_text()
    for binary, heading in SECTIONS.items():
        start = readme.index(heading)
        t0 = readme.index("| flag | env |", start)
        t1 = t0
        lines = readme[t0:].split("\n")
        n = 0
        while n < len(lines) and lines[n].startswith("|"):
            n += 1
        t1 = t0 + len("\n".join(lines[:n])) + 1
        readme = readme[:t0] + table(binary) + readme[t1:]
    (ROOT / "README.md").write_text(readme)


if __name__ == "__main__":
    main()
