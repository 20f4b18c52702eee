"""Shared by the bench scripts: replace one "## " section of bench/RESULTS.md; a free port."""
import os
import socket

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")
HEADER = "# Benchmark results\n\nLatest figures, each with the command that produced it.\n"


def record(title, body_lines):
    """Writes `## title` followed by body_lines, replacing an earlier section of that title."""
    section = "\n".join(["## " + title, ""] + body_lines) + "\n"
    text = open(PATH).read() if os.path.exists(PATH) else HEADER
    start = text.find("## " + title)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + ("\n" + text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(PATH, "w") as f:
        f.write(text)
    print("recorded in bench/RESULTS.md")


def free_port():
    """A loopback TCP port nothing listens on now (for a peer's rendezvous)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p
