"""`la-edge chat` as a user runs it: piped (scripted) and on a real pseudo-terminal (Ctrl-C)."""

import json
import os
import pty
import select
import subprocess
import sys
import time

BASE = [sys.executable, "-m", "la_edge", "chat", "--temperature", "0", "--max-tokens", "12"]


def chat(lines, *args, timeout=300):
    return subprocess.run(BASE + list(args), input="".join(line + "\n" for line in lines), capture_output=True,
                          text=True, timeout=timeout)


def test_piped_messages_and_commands(tmp_path):
    path = tmp_path / "t.json"
    r = chat(["Hi!", "/principle Answer like a pirate.", "/ratio 3", "What is the sea?", "/compare",
              f"/save {path}", "/nope", "/ratio banana", "/quit", "never read"])
    assert r.returncode == 0, r.stderr
    answers = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(answers) == 6  # two answers, then compare: label, plain, label, aligned
    assert answers[2] == "[plain, no principle]" and answers[4].startswith("[aligned, r=3")
    assert answers[5] == answers[1]  # /compare's aligned answer repeats the greedy aligned answer
    saved = json.loads(path.read_text())
    assert saved["principle"] == "Answer like a pirate." and saved["ratio"] == 3.0
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "user", "assistant"]
    assert "unknown command /nope" in r.stderr and "error" in r.stderr and "Traceback" not in r.stderr


def test_load_restores_the_conversation(tmp_path):
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "My name is Ada."},
                                             {"role": "assistant", "content": "Hello Ada!"}],
                                "principle": "Be brief.", "ratio": 1.5, "seed": 7}))
    r = chat([f"/load {path}", "What is my name?", f"/save {path}"])
    assert r.returncode == 0, r.stderr
    saved = json.loads(path.read_text())
    assert len(saved["messages"]) == 4 and saved["ratio"] == 1.5 and saved["seed"] == 7
    bad = tmp_path / "bad.json"
    bad.write_text('{"messages": "nope"}')
    r = chat([f"/load {bad}", f"/load {tmp_path / 'missing.json'}"])
    assert r.returncode == 0 and r.stderr.count("error: cannot load") == 2


def test_overflow_offers_reset_or_trim():
    long = "Tell me about the history of the moon and the stars in great detail, please. " * 6
    r = chat([long, long, long], "--n-ctx", "160")
    assert r.returncode == 0 and "/reset" in r.stderr and "--trim-history" in r.stderr
    r = chat([long, long, long], "--n-ctx", "160", "--trim-history")
    assert r.returncode == 0 and "dropped the oldest turn" in r.stderr
    assert len([line for line in r.stdout.splitlines() if line.strip()]) == 3


def _read_until(fd, needle, timeout):
    buf, end = b"", time.monotonic() + timeout
    while needle not in buf and time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                buf += os.read(fd, 4096)
            except OSError:
                break
    return buf


def _read_answer_start(fd, timeout):
    """What the terminal shows up to "la> " and the first characters of the answer after it."""
    buf, end = _read_until(fd, b"la> ", timeout), time.monotonic() + timeout
    while len(buf.partition(b"la> ")[2].strip()) < 4 and time.monotonic() < end:
        buf += _read_until(fd, b"\x00", 0.2)
    return buf


def test_ctrl_c_stops_the_answer_and_keeps_the_session():
    # The answer cannot end before Ctrl-C lands, however loaded the machine: end-of-generation is
    # ignored and 3500 tokens on one thread take a minute or more, and Ctrl-C is sent only once the answer
    # is streaming (a Ctrl-C before that would land outside it).
    pid, fd = pty.fork()
    if pid == 0:  # the child: la-edge chat on a terminal
        os.execv(sys.executable, [sys.executable, "-m", "la_edge", "chat", "--temperature", "0",
                                  "--max-tokens", "3500", "--ignore-eos", "--n-ctx", "4096", "--threads", "1"])
    try:
        assert b"you> " in _read_until(fd, b"you> ", 180)
        os.write(fd, b"Write a very long story about a dragon.\r")
        shown = _read_answer_start(fd, 180)
        assert len(shown.partition(b"la> ")[2].strip()) >= 4, shown  # the answer is streaming
        os.write(fd, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the chat
        out = _read_until(fd, b"you> ", 120)
        assert b"[stopped]" in out and b"you> " in out, out
        os.write(fd, b"/quit\r")
        end, status = time.monotonic() + 30, None
        while status is None and time.monotonic() < end:  # a bounded wait for the exit
            _read_until(fd, b"\x00", 0.2)
            done, st = os.waitpid(pid, os.WNOHANG)
            status = st if done else None
        assert status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        os.close(fd)


def test_piped_principles_avoid_and_adaptive(tmp_path):
    path = tmp_path / "t.json"
    r = chat(["/principle Be brief.", "/principle add Answer in French.", "/avoid Use jargon.", "/adaptive on",
              "/principle list", "What is rain?", "/principle drop 9", "/principle drop 1", "/principle list",
              f"/save {path}", f"/load {path}", "/principle list"], "--max-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert ("1. 'Be brief.' r=2; 2. 'Answer in French.' r=2; avoid 'Use jargon.' s=2; adaptive ratio"
            in r.stderr)
    assert "error: /principle drop N takes N in 1..2" in r.stderr
    assert r.stderr.count("1. 'Answer in French.' r=2; avoid 'Use jargon.' s=2; adaptive ratio") == 2
    assert len([line for line in r.stdout.splitlines() if line.strip()]) == 1
    saved = json.loads(path.read_text())
    assert saved["principle"] == "Answer in French." and saved["ratio_schedule"] == "adaptive"
    assert saved["principles"] == [{"text": "Answer in French.", "ratio": 2.0, "weight": 1.0}]
    assert saved["avoid"] == [{"text": "Use jargon.", "ratio": 2.0}]


def test_preset_and_principle_from_system(tmp_path):
    presets = tmp_path / "presets.toml"
    presets.write_text('[presets.french]\nprinciples = [{text = "Answer in French.", ratio = 3}]\n')
    by_preset = chat(["What is rain?"], "--presets-file", str(presets), "--preset", "french")
    from_system = chat(["What is rain?", "/compare"], "--principle-from", "system", "--system", "Answer in German.")
    given = chat(["What is rain?", "/principle Answer in German.", "/ratio 2", "/reset", "What is rain?"],
                 "--principle", "Answer in French.", "--ratio", "3")
    for r in (by_preset, from_system, given):
        assert r.returncode == 0, r.stderr
    # answers may span lines: compare stdout blocks (each answer ends with a newline)
    assert given.stdout.startswith(by_preset.stdout) and by_preset.stdout.strip()
    german = given.stdout[len(by_preset.stdout):]
    assert from_system.stdout.startswith(german)  # the system message is the principle
    compare = from_system.stdout[len(german):]
    assert compare.startswith("[plain, no principle]\n") and compare.endswith(german)
    assert "principle from the system message" in compare and compare.count(german) == 1  # plain differs
    for args, needle in [(("--presets-file", str(presets), "--preset", "nope"), "no such preset"),
                         (("--presets-file", str(presets)), "--preset NAME"),
                         (("--preset", "french", "--principle", "x"), "without --principle")]:
        r = chat([], *args)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


SMALL = ("--n-ctx", "512", "--threads", "1", "--max-tokens", "6")  # quick on a shared CPU


def test_negative_is_the_flag_and_shows_in_the_list(tmp_path):
    path = tmp_path / "t.json"
    r = chat(["/negative Talk about cats.", "/cfg 4", "/avoid Use jargon.", "/principle list", "What is a pet?",
              "/compare", f"/save {path}", "/cfg 0.5", "/negative", "/negative", "/principle list"], *SMALL)
    flag = chat(["What is a pet?"], "--avoid", "Use jargon.", "--negative", "Talk about cats.", "--cfg-scale", "4",
                *SMALL)
    assert r.returncode == 0 and flag.returncode == 0, r.stderr + flag.stderr
    listed = "avoid 'Use jargon.' s=2; negative 'Talk about cats.' cfg_scale=4"
    answer, _, rest = r.stdout.partition("[plain, no principle]\n")
    plain, _, guided = rest.partition(f"[guided, {listed}]\n")  # answers may span lines
    assert flag.stdout == answer == guided and plain and plain != guided  # /negative TEXT is --negative TEXT
    assert r.stderr.count(listed) == 1
    assert "error: /cfg G takes g in [1, 101]" in r.stderr and "no negative prompt to clear" in r.stderr
    assert r.stderr.rstrip().endswith("avoid 'Use jargon.' s=2")  # the negative is gone, the avoid text stays
    saved = json.loads(path.read_text())
    assert saved["negative"] == {"text": "Talk about cats.", "cfg_scale": 4.0}
    assert saved["avoid"] == [{"text": "Use jargon.", "ratio": 2.0}, {"text": "Talk about cats.", "ratio": 3.0}]


def test_documents_answer_from_the_file_and_bad_files_are_one_line(tmp_path):
    doc = tmp_path / "zorb.txt"
    doc.write_text("The tower of Zorb is in the city of Plinth. It is 300 m tall.\n")
    (tmp_path / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "big.txt").write_text("word " * 600)
    path = tmp_path / "t.json"
    bad = ["missing.txt", "blob.bin", "latin1.txt", "empty.txt", "big.txt", "."]
    r = chat([f"/document {tmp_path / name}" for name in bad] + [
        f"/document {doc}", "/principle Be brief.", "/negative Cats.", "/document", "Where is the tower of Zorb?",
        "/compare", f"/save {path}", "/document clear", "/document", "/document drop 1"], *SMALL)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: cannot use")]
    assert len(errors) == len(bad)
    assert "No such file" in errors[0] and "not a text file" in errors[1] and "not a text file" in errors[2]
    assert "empty" in errors[3] and "more than the context holds (512 tokens" in errors[4]
    assert r.stderr.count("error: documents go alone") == 2  # a principle or a negative beside documents
    assert f"1. {doc} (" in r.stderr and "document_ratio: 1" in r.stderr
    answer, _, rest = r.stdout.partition("[plain, no principle]\n")
    plain, _, guided = rest.partition("[guided, 1 document(s) r=1]\n")  # answers may span lines
    assert guided == answer and plain and plain != answer
    saved = json.loads(path.read_text())
    assert saved["documents"] == [doc.read_text()] and saved["document_names"] == [str(doc)]
    assert "documents cleared" in r.stderr and "no documents (/document FILE adds one)" in r.stderr
    assert "error: no documents to drop" in r.stderr
