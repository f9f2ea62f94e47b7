"""`la-edge chat`: a multi-turn aligned chat in the terminal (or scripted through stdin).

Interactive on a terminal (line editing and history where readline exists; Ctrl-C stops the answer
in progress and keeps the session); with stdin piped, each line is one user message (or command)
and each answer is one block on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import threading
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, TextIO

from ..decoding.combination import check_cfg_scale
from ..decoding.params import GenerationParams
from ..errors import ContextOverflowError, LaEdgeError
from ..runtime.prompts import system_as_principle
from ..runtime.spec import DEFAULT_AVOID_RATIO, Avoid, Principle, PrincipleSpec

MAX_DOCUMENT_BYTES = 1 << 20  # a document larger than this is refused before it is tokenized

HELP = """commands:
  /principle TEXT   set the principle (/principle alone clears all guidance: plain decoding)
  /principle add TEXT   add a principle (composed with the others, one branch each)
  /principle list   show all guidance: principles, things to avoid, negative, documents, ratio schedule
  /principle drop N drop principle N (as numbered by /principle list)
  /avoid TEXT       add something to avoid (/avoid alone clears them)
  /negative TEXT    steer away from TEXT, placed as a principle would be (/negative alone clears it)
  /cfg G            the negative's guidance scale g in [1, 101] (default 3; 1 = off)
  /document FILE    answer from this text file (repeatable); /document alone lists them,
                    /document clear drops them all, /document drop N drops one
  /adaptive on|off  scale the ratio per token (on) or keep it fixed (off)
  /ratio R          set the alignment ratio r (of every principle)
  /system TEXT      set the system message (/system alone clears it)
  /compare          answer the last user message again, plain and guided, one after the other
  /save FILE        write the transcript as JSON (messages, principles, avoid, negative, documents,
                    ratio, seed, system)
  /load FILE        read a transcript written by /save
  /reset            forget the conversation (keeps the guidance, ratio and system)
  /help             this text
  /quit             leave (Ctrl-D too)"""


def _on_ctrl_c(stop):
    """While an answer streams, Ctrl-C calls stop() from a SIGINT handler: a KeyboardInterrupt could
    land inside a finalizer and be lost. Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, lambda signum, frame: stop())


@dataclass
class ChatState:
    """What a transcript holds; /save writes it, /load reads it. `ratio` is the ratio new principles
    take (and /ratio sets on every one). The /negative text is the last avoid item of `spec`, pushed at
    cfg_scale - 1 (as `--negative`); `negative` names it while it is there. `document_names` label
    spec.documents for /document (file names, "document N" for those given on the command line)."""

    messages: List[Dict[str, str]] = field(default_factory=list)
    spec: PrincipleSpec = field(default_factory=PrincipleSpec)
    ratio: float = 2.0
    system: Optional[str] = None
    seed: Optional[int] = None
    negative: Optional[str] = None
    cfg_scale: float = DEFAULT_AVOID_RATIO + 1.0
    document_names: List[str] = field(default_factory=list)

    def negative_item(self, text: Optional[str] = None) -> Optional[Avoid]:
        text = self.negative if text is None else text
        return None if text is None else Avoid(text, self.cfg_scale - 1.0)

    def sync(self) -> None:
        """Forget a negative that is no longer the last avoid item, and name unnamed documents."""
        if self.negative is not None and self.spec.avoid[-1:] != (self.negative_item(),):
            self.negative = None
        if len(self.document_names) != len(self.spec.documents):
            self.document_names = [f"document {i + 1}" for i in range(len(self.spec.documents))]

    def describe(self) -> str:
        """All the guidance in one line (/principle list, /compare labels), the negative named as such."""
        spec, neg = self.spec, self.negative_item()
        if neg is None:
            return spec.describe()
        rest = replace(spec, avoid=spec.avoid[:-1], adaptive=False)
        parts = [rest.describe()] if rest.guided else []
        parts.append(f"negative {neg.text!r} cfg_scale={self.cfg_scale:g}")
        return "; ".join(parts) + ("; adaptive ratio" if spec.adaptive else "")

    @property
    def principle(self) -> Optional[str]:
        """The principle when there is exactly one (the transcript's `principle` field), else None."""
        return self.spec.principles[0].text if len(self.spec.principles) == 1 else None

    def to_dict(self) -> Dict[str, object]:
        negative = None if self.negative is None else {"text": self.negative, "cfg_scale": self.cfg_scale}
        out = {"messages": self.messages, "principle": self.principle, "ratio": self.ratio,
               **self.spec.to_fields(), "negative": negative, "system": self.system, "seed": self.seed}
        if self.spec.documents:
            out["document_names"] = self.document_names
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, object]) -> "ChatState":
        msgs = d.get("messages")
        if not isinstance(msgs, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                 and isinstance(m.get("content"), str) for m in msgs):
            raise ValueError("'messages' must be a list of {role, content} objects")
        ratio = d.get("ratio", 2.0)
        GenerationParams(ratio=ratio)  # validated like any ratio
        principle, system, seed = d.get("principle"), d.get("system"), d.get("seed")
        if principle is not None and not isinstance(principle, str):
            raise ValueError("'principle' must be a string or null")
        if system is not None and not isinstance(system, str):
            raise ValueError("'system' must be a string or null")
        if seed is not None and not isinstance(seed, int):
            raise ValueError("'seed' must be an integer or null")
        if d.get("principles") is not None:  # written by /save since several principles
            spec = PrincipleSpec.from_fields(d, float(ratio))
        else:
            spec = PrincipleSpec.one(principle, float(ratio))
        negative, names = d.get("negative"), d.get("document_names") or []
        if negative is not None and not (isinstance(negative, dict) and isinstance(negative.get("text"), str)
                                         and isinstance(negative.get("cfg_scale"), (int, float))):
            raise ValueError("'negative' must be null or {text, cfg_scale} (the last item of 'avoid')")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("'document_names' must be a list of strings")
        state = cls([{"role": m["role"], "content": m["content"]} for m in msgs], spec, float(ratio), system, seed)
        if negative is not None:
            state.negative, state.cfg_scale = negative["text"], float(check_cfg_scale(negative["cfg_scale"]))
        state.document_names = list(names)
        state.sync()
        return state


class ChatSession:
    """One conversation over an Aligner; `handle(line)` runs a message or a command."""

    def __init__(self, aligner, params: GenerationParams, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
                 trim_history: bool = False, spec: Optional[PrincipleSpec] = None, system: Optional[str] = None,
                 principle_from: str = "none"):
        self.la, self.params, self.out, self.err = aligner, params, out, err
        self.trim_history = trim_history
        self.principle_from = principle_from  # "system": the system message is the principle when none is set
        self.state = ChatState(spec=spec or PrincipleSpec(), ratio=params.ratio, system=system, seed=params.seed)
        self.state.sync()

    # ---- one line ------------------------------------------------------------------------------
    def handle(self, line: str) -> bool:
        """Run one input line; False when the session should end."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return True
        if line.startswith("/"):
            return self._command(line)
        self.state.messages.append({"role": "user", "content": line})
        text = self._answer(self.state.messages, self.state.spec)
        if text is None:
            self.state.messages.pop()  # nothing was answered: the turn is not kept
        else:
            self.state.messages.append({"role": "assistant", "content": text})
        return True

    def _command(self, line: str) -> bool:
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        st = self.state
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            self._say(HELP)
        elif name == "/principle":
            self._principle(arg)
        elif name == "/avoid":  # the negative stays the last avoid item, and /avoid alone keeps it
            neg = st.spec.avoid[-1:] if st.negative is not None else ()
            avoid = st.spec.avoid[: len(st.spec.avoid) - len(neg)] + (Avoid(arg),) + neg if arg else neg
            self._set(lambda: _without(st.spec, avoid=avoid), f"avoid: {arg!r}" if arg else "nothing to avoid")
        elif name == "/negative":
            self._negative(arg)
        elif name == "/cfg":
            self._cfg(arg)
        elif name in ("/document", "/documents"):
            self._document(arg)
        elif name == "/adaptive":
            if arg not in ("on", "off"):
                self._say("usage: /adaptive on|off")
            else:
                self._set(lambda: replace(st.spec, adaptive=arg == "on"), f"adaptive ratio: {arg}")
        elif name == "/ratio":
            try:
                ratio = GenerationParams(ratio=float(arg)).ratio
                principles = tuple(replace(p, ratio=ratio) for p in st.spec.principles)
                if self._set(lambda: replace(st.spec, principles=principles), f"ratio: {ratio:g}"):
                    st.ratio = ratio
            except (ValueError, LaEdgeError) as exc:
                self._say(f"error: {exc}")
        elif name == "/system":
            st.system = arg or None
            self._say(f"system: {st.system!r}" if st.system else "system message cleared")
        elif name == "/reset":
            st.messages = []
            self._say("conversation reset")
        elif name == "/compare":
            self._compare()
        elif name in ("/save", "/load"):
            self._file(name, arg)
        else:
            self._say(f"unknown command {name}; /help lists them")
        return True

    def _principle(self, arg: str) -> None:
        """/principle TEXT | add TEXT | list | drop N, and /principle alone (clear)."""
        spec, (sub, _, rest) = self.state.spec, arg.partition(" ")
        rest = rest.strip()
        if sub == "list" and not rest:
            self._say(self.state.describe())
        elif sub in ("add", "drop") and not rest:
            self._say(f"usage: /principle {sub} {'TEXT' if sub == 'add' else 'N'}")
        elif sub == "add":
            self._set(lambda: replace(spec, principles=spec.principles + (Principle(rest, self.state.ratio),)),
                      f"principles: {len(spec.principles) + 1}")
        elif sub == "drop":
            n = int(rest) if rest.isdigit() else 0
            if not 1 <= n <= len(spec.principles):
                self._say(f"error: /principle drop N takes N in 1..{len(spec.principles)} (see /principle list)")
                return
            kept = spec.principles[: n - 1] + spec.principles[n:]
            self._set(lambda: replace(spec, principles=kept) if kept else PrincipleSpec(),
                      f"dropped principle {n}" + ("" if kept else " (none left: plain decoding)"))
        elif arg:
            self._set(lambda: replace(spec, principles=(Principle(arg, self.state.ratio),)), f"principle: {arg!r}")
        else:
            self._set(PrincipleSpec, "guidance cleared (plain decoding)")

    def _negative(self, text: str) -> None:
        """/negative TEXT (set, replacing the last one) and /negative alone (clear)."""
        st = self.state
        kept = st.spec.avoid[:-1] if st.negative is not None else st.spec.avoid
        if text:
            self._set(lambda: replace(st.spec, avoid=kept + (st.negative_item(text),)),
                      f"negative: {text!r} (cfg_scale {st.cfg_scale:g})", negative=text)
        elif st.negative is None:
            self._say("no negative prompt to clear")
        else:
            self._set(lambda: _without(st.spec, avoid=kept), "negative prompt cleared", negative=None)

    def _cfg(self, arg: str) -> None:
        """/cfg G: the negative's guidance scale (it is pushed at G - 1)."""
        st = self.state
        try:
            scale = check_cfg_scale(float(arg))
        except (ValueError, LaEdgeError) as exc:
            self._say(f"error: /cfg G takes g in [1, 101] (1 = off): {exc}")
            return
        avoid = st.spec.avoid[:-1] + (Avoid(st.negative, scale - 1.0),) if st.negative is not None else st.spec.avoid
        self._set(lambda: replace(st.spec, avoid=avoid), f"cfg_scale: {scale:g}", cfg_scale=scale)

    def _document(self, arg: str) -> None:
        """/document FILE (add), /document alone (list), /document clear, /document drop N."""
        st, (sub, _, rest) = self.state, arg.partition(" ")
        docs, names = st.spec.documents, st.document_names
        if not arg:
            lines = [f"{i + 1}. {n} ({len(d)} characters)" for i, (n, d) in enumerate(zip(names, docs))]
            self._say("\n".join(lines + [f"document_ratio: {st.spec.document_ratio:g}"]) if docs else
                      "no documents (/document FILE adds one)")
        elif arg == "clear":
            self._set(lambda: _without(st.spec, documents=()), "documents cleared", document_names=[])
        elif sub == "drop" and (rest.isdigit() or not rest):
            n = int(rest) if rest else 0
            if not 1 <= n <= len(docs):
                self._say(f"error: /document drop N takes N in 1..{len(docs)} (see /document)" if docs else
                          "error: no documents to drop")
                return
            self._set(lambda: _without(st.spec, documents=docs[: n - 1] + docs[n:]), f"dropped document {n}",
                      document_names=names[: n - 1] + names[n:])
        else:
            try:
                text, tokens = self._read_document(arg)
            except (OSError, ValueError) as exc:
                self._say(f"error: cannot use {arg} as a document: {exc}")
                return
            self._set(lambda: replace(st.spec, documents=docs + (text,)),
                      f"document {len(docs) + 1}: {arg} ({tokens} tokens)", document_names=names + [arg])

    def _read_document(self, path: str):
        """(text, tokens) of a UTF-8 text file that fits the context with room for an answer; OSError or
        ValueError saying why not."""
        path = os.path.expanduser(path)
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO, tty or device would block the chat
            raise ValueError("not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)
        if len(data) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"larger than {MAX_DOCUMENT_BYTES >> 20} MiB")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is None or "\0" in text:
            raise ValueError("not a text file (binary, or not UTF-8)")
        if not text.strip():
            raise ValueError("it is empty")
        tokens, room = len(self.la.tokenize(text)), self.la.n_ctx - self.params.max_tokens
        if tokens > room:
            raise ValueError(f"{tokens} tokens, more than the context holds ({self.la.n_ctx} tokens, "
                             f"{self.params.max_tokens} of them kept for the answer)")
        return text, tokens

    def _set(self, make, message: str, **state) -> bool:
        """Adopt the PrincipleSpec that `make()` builds, and the ChatState fields in `state`; a bad spec is
        an error and changes nothing."""
        try:
            spec = make()
        except LaEdgeError as exc:
            if getattr(exc, "field", None) == "documents":
                self._say("error: documents go alone, without principles, things to avoid or a negative: "
                          "/document clear drops the documents, /principle alone all the rest")
            else:
                self._say(f"error: {exc}")
            return False
        for key, value in state.items():
            setattr(self.state, key, value)
        self.state.spec = spec
        self.state.sync()
        self._say(message)
        return True

    def _file(self, name: str, path: str) -> None:
        if not path:
            self._say(f"usage: {name} FILE")
            return
        try:
            if name == "/save":
                with open(os.path.expanduser(path), "w", encoding="utf-8") as f:
                    json.dump(self.state.to_dict(), f, ensure_ascii=False, indent=2)
                self._say(f"saved {len(self.state.messages)} messages to {path}")
            else:
                with open(os.path.expanduser(path), encoding="utf-8") as f:
                    self.state = ChatState.from_dict(json.load(f))
                self._say(f"loaded {len(self.state.messages)} messages from {path}")
        except (OSError, ValueError, LaEdgeError) as exc:
            self._say(f"error: cannot {name[1:]} {path}: {exc}")

    def _compare(self) -> None:
        msgs = self.state.messages
        last = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=None)
        if last is None:
            self._say("nothing to compare yet: send a message first")
            return
        history, spec = msgs[: last + 1], self.state.spec
        self.out.write("[plain, no principle]\n")
        self._answer(history, PrincipleSpec(), plain=True)
        if not spec.principles and self.principle_from == "system" and self.state.system:
            label = f"[aligned, r={self.state.ratio:g}, principle from the system message: {self.state.system!r}]"
        elif self.state.principle is not None and spec.single is not None:
            label = f"[aligned, r={self.state.ratio:g}, principle: {self.state.principle!r}]"
        elif spec.principles:
            label = f"[aligned, r={self.state.ratio:g}, {self.state.describe()}]"
        elif spec.guided:
            label = f"[guided, {self.state.describe()}]"
        else:
            label = ("[aligned: no guidance set, so this is plain decoding too; /principle TEXT, /negative TEXT or "
                     "/document FILE sets one]")
        self.out.write(label + "\n")
        self._answer(history, spec)

    # ---- generation ------------------------------------------------------------------------------
    def _conversation(self, messages: List[Dict[str, str]]) -> List[Dict[str, str]]:
        sys_msg = [{"role": "system", "content": self.state.system}] if self.state.system else []
        return sys_msg + list(messages)

    def _steered(self, messages, spec: PrincipleSpec, plain: bool):
        """(spec, conversation): with principle_from "system" the system message leaves the conversation
        and, when no principle is set and the answer is not the plain one, becomes the principle."""
        conversation = self._conversation(messages)
        if self.principle_from != "system":
            return spec, conversation
        principle, rest = system_as_principle(conversation)
        if principle is not None and not plain and not spec.principles:
            spec = PrincipleSpec.one(principle, self.state.ratio)
        return spec, rest

    def _answer(self, messages, spec: PrincipleSpec, plain: bool = False) -> Optional[str]:
        """Stream one answer to `out`; its text (possibly cut by Ctrl-C), or None on an error."""
        params = self.params.with_(ratio=self.state.ratio, seed=self.state.seed)
        while True:
            try:
                steered, conversation = self._steered(messages, spec, plain)
                request = steered.submit(self.la, params, messages=conversation)
                break
            except ContextOverflowError as exc:
                if self.trim_history and self._drop_oldest_turn(messages):
                    continue
                docs = ", /document clear drops the documents" if spec.documents else ""
                self._say(f"error: {exc}\n(the conversation no longer fits: /reset starts over{docs}, or run with "
                          f"--trim-history to drop the oldest turns)")
                return None
            except LaEdgeError as exc:
                self._say(f"error: {exc}")
                return None
        parts: List[str] = []
        stopped: List[bool] = []
        previous = _on_ctrl_c(lambda: (stopped.append(True), request.cancel()))
        try:
            for chunk in request.stream():
                parts.append(chunk.text)
                self.out.write(chunk.text)
                self.out.flush()
        except KeyboardInterrupt:  # where no handler could be set (not the main thread)
            request.cancel()
            stopped.append(True)
        except LaEdgeError as exc:
            self.out.write("\n")
            self._say(f"error: {exc}")
            return None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if stopped:
            self.out.write(" [stopped]")
        self.out.write("\n")
        self.out.flush()
        return "".join(parts)

    def _drop_oldest_turn(self, messages: List[Dict[str, str]]) -> bool:
        """Remove the oldest user turn (and its answer) in place; False when only the last is left."""
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if len(users) < 2:
            return False
        del messages[: users[1]]
        self._say("(dropped the oldest turn to fit the context)")
        return True

    def _say(self, text: str) -> None:
        self.err.write(text + "\n")
        self.err.flush()


def _without(spec: PrincipleSpec, **changes) -> PrincipleSpec:
    """`spec` with `changes` (fewer branches); the adaptive switch goes off once nothing is left to scale."""
    bare = replace(spec, adaptive=False, **changes)
    return replace(bare, adaptive=spec.adaptive) if bare.guided else bare


def run(aligner, params: GenerationParams, inp: TextIO = sys.stdin, out: TextIO = sys.stdout,
        err: TextIO = sys.stderr, trim_history: bool = False, spec: Optional[PrincipleSpec] = None,
        system: Optional[str] = None, principle_from: str = "none") -> int:
    """The chat loop: a prompt and readline on a terminal, plain lines when piped."""
    session = ChatSession(aligner, params, out, err, trim_history, spec, system, principle_from)
    interactive = inp.isatty() and out.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        err.write("la-edge chat: /help lists the commands, /quit or Ctrl-D leaves\n")
    while True:
        try:
            line = input("you> ") if interactive else inp.readline()
        except EOFError:
            break
        except KeyboardInterrupt:
            err.write("\n")
            continue  # Ctrl-C at the prompt: a fresh line, the session stays
        if not interactive and line == "":
            break
        if interactive and line.strip() and not line.startswith("/"):
            out.write("la> ")
        if not session.handle(line):
            break
    return 0
