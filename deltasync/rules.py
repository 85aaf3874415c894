"""rsync's filter rules: what ``--filter``, ``--include``, ``--exclude`` and their
``-from`` files say, read as rsync reads them (its ``exclude.c``,
``parse_rule_tok``, ``parse_filter_str``, ``parse_filter_file``).

A rule string is a rule name and optional modifiers, then a space or ``_``,
then the pattern (or the file name of a merge rule):

* short names ``-`` exclude, ``+`` include, ``H`` hide (exclude on the
  sender's side only), ``S`` show (include, sender), ``P`` protect (exclude
  on the receiver's side: not deleted), ``R`` risk (include, receiver),
  ``.`` merge a file of rules, ``:`` dir-merge (a per-directory file of rules
  read in each directory of the walk), ``!`` clear the rules before it;
  long names ``exclude``, ``include``, ``hide``, ``show``, ``protect``,
  ``risk``, ``merge``, ``dir-merge``, ``clear`` (modifiers after a ``,``);
* modifiers ``!`` (the rule applies where the pattern does not match), ``s``
  and ``r`` (sender's, receiver's side only); for merge rules ``-`` and
  ``+`` (every line is a bare pattern of that action), ``e`` (exclude the
  merge file's own name), ``n`` (a per-directory file's rules are not
  inherited by subdirectories), ``w`` (words, not lines);
* ``--include``/``--exclude`` arguments and the lines of ``--include-from``/
  ``--exclude-from`` files take only the old prefixes ``+ ``, ``- `` and
  ``!``; the rest of the text is the pattern (``--exclude -foo`` excludes
  ``-foo``).

Modifiers rsync has and deltasync does not implement (``/``, ``C``, ``p``,
``x``) are refused with a ``UsageError``, as is anything rsync refuses; the
message follows rsync's.  ``--delete-excluded`` makes every include and
exclude without a side modifier a sender-side rule, as in rsync.

A parsed rule (``FilterRule``) prints back as a rule string (``text``) that
parses to the same rule: that is what a far side is sent.
"""

from __future__ import annotations

import os

from .errors import UsageError
from .filters import check_pattern
from .sides import Block, SideFilter, blocks

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .filters import Rule

_LONG = {"clear": "!", "dir-merge": ":", "exclude": "-", "hide": "H", "include": "+",
         "merge": ".", "protect": "P", "risk": "R", "show": "S"}
# action, side given by the name ("" both)
_SHORT = {"-": ("-", ""), "+": ("+", ""), "H": ("-", "s"), "S": ("+", "s"),
          "P": ("-", "r"), "R": ("+", "r"), ".": (".", ""), ":": (":", ""), "!": ("!", "")}
_UNSUPPORTED = {"/": "'/' (match the absolute path)", "C": "'C' (CVS rules)",
                "p": "'p' (perishable)", "x": "'x' (xattr names)"}
MAX_MERGE_DEPTH = 16  # rsync's MAX_MERGE_DEPTH: merge files merging merge files
MAX_RULE_FILE = 16 << 20  # a per-directory file larger than this is refused


class FilterRule:
    """One rule: ``action`` is ``-``, ``+``, ``.`` (merge), ``:`` (dir-merge)
    or ``!`` (clear); ``side`` ``""`` (both), ``"s"`` or ``"r"``; for merge
    rules ``mods`` is a subset of ``+-enw`` and ``pattern`` the file name."""

    __slots__ = ("action", "pattern", "side", "negate", "mods")

    def __init__(self, action: str, pattern: str = "", side: str = "", negate: bool = False,
                 mods: str = "") -> None:
        self.action, self.pattern, self.side = action, pattern, side
        self.negate, self.mods = negate, "".join(sorted(set(mods)))

    def _key(self) -> tuple[str, str, str, bool, str]:
        return (self.action, self.pattern, self.side, self.negate, self.mods)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FilterRule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"FilterRule({self.text()!r})"

    def text(self) -> str:
        """The rule as a ``--filter`` string that parses back to it."""
        if self.action == "!":
            return "!"
        mods = ("!" if self.negate else "") + self.side + self.mods
        return f"{self.action}{',' + mods if mods else ''} {self.pattern}"

    def applies(self, side: str) -> bool:
        return not self.side or self.side == side


def _show(text: str) -> str:
    from .filters import _show as show

    return show(text)


def _check_pattern(pattern: str, text: str) -> None:
    check_pattern(pattern, text)


def parse_filter(text: str, side_from: str = "", default: str = "",
                 word_split: bool = False) -> FilterRule | None:
    """One ``--filter`` rule (``default`` ``+``/``-``: a line of a merge file
    with that modifier, a bare pattern).  None for nothing (an empty rule)."""
    if default:
        if not text:
            return None
        _check_pattern(text, text)
        return FilterRule(default, text, side_from)
    if not text:
        return None
    s = text
    ch = ""
    pos = 0
    for long, short in _LONG.items():
        if s.startswith(long) and (len(s) == len(long) or s[len(long)] in " _,\t\n"):
            ch, pos = short, len(long)
            break
    else:
        if s[0] in "cdehimprs" and s[0] not in _SHORT:
            raise UsageError(f"Unknown filter rule: {_show(text)}")
        ch, pos = s[0], 1
    if ch not in _SHORT:
        raise UsageError(f"Unknown filter rule: {_show(text)}")
    action, side = _SHORT[ch]
    negate, mods = False, ""
    if action == "!":
        if s[pos:]:
            raise UsageError(f"'!' rule has trailing characters: {_show(text)}")
        return FilterRule("!")
    if pos < len(s) and s[pos] == ",":
        pos += 1
    merge = action in ".:"
    by_name = bool(side)
    while pos < len(s) and s[pos] not in " _":
        m = s[pos]
        ok = True
        if m in "-+":
            ok = merge and not ("-" in mods or "+" in mods)
        elif m == "!":
            ok = not merge
            negate = True
        elif m in "sr":
            ok = not by_name
            side = m if not side or side == m else side + m
        elif m in "enw":
            ok = merge
        elif m in _UNSUPPORTED:
            raise UsageError(f"filter rule {_show(text)}: modifier {_UNSUPPORTED[m]} is "
                             "not supported by deltasync")
        else:
            ok = False
        if not ok:
            raise UsageError(f"invalid modifier '{m}' at position {pos} in filter rule: "
                             f"{_show(text)}")
        if m in "-+enw":
            mods += m
        pos += 1
    if pos < len(s):
        pos += 1  # the separator
    if len(side) > 1:
        side = ""  # both given: both sides
    if side_from:
        if side:
            raise UsageError("specified-side merge file contains specified-side filter: "
                             f"{_show(text)}")
        side = side_from
    pattern = s[pos:]
    if word_split:
        pattern = pattern.split()[0] if pattern.split() else ""
    if not pattern:
        if merge:
            raise UsageError(f"filter rule {_show(text)}: the .cvsignore default of a "
                             "merge rule is not supported by deltasync")
        raise UsageError(f"unexpected end of filter rule: {_show(text)}")
    _check_pattern(pattern, text)
    if action == ":" and "/" in pattern.lstrip("/"):
        raise UsageError(f"filter rule {_show(text)}: a per-directory merge file must be a "
                         "plain name in deltasync")
    return FilterRule(action, pattern, side, negate, mods)


def parse_arg(text: str, include: bool) -> FilterRule | None:
    """An ``--include``/``--exclude`` argument or a line of an ``-from`` file:
    only the old prefixes ``+ ``, ``- ``, ``!``."""
    if not text:
        return None
    action, pattern = "+" if include else "-", text
    if text.startswith(("- ", "+ ")):
        action, pattern = text[0], text[2:]
        if not pattern:
            raise UsageError(f"filter rule {_show(text)}: nothing after the "
                             f"'{text[:2]}' prefix")
    elif text == "!":
        return FilterRule("!")
    _check_pattern(pattern, text)
    return FilterRule(action, pattern)


def exclude_arg_rules(patterns: Iterable[str]) -> list[FilterRule]:
    """``--exclude`` arguments as rules (what ``filters.Excluder`` is built from)."""
    out: list[FilterRule] = []
    for p in patterns:
        if not isinstance(p, str):
            raise UsageError(f"exclude pattern is not a string: {p!r}")
        r = parse_arg(p, False)
        if r is not None:
            out.append(r)
    return out


def split_lines(data: bytes, words: bool = False) -> list[str]:
    """A rule file's lines (``\\n``, ``\\r\\n`` or ``\\r`` end one) or, ``words``,
    its whitespace-separated words; comments (``;``, ``#`` first) and blank
    lines dropped, as rsync's ``parse_filter_file``."""
    text = os.fsdecode(data)
    if words:
        return text.split()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [ln for ln in lines if ln and ln[0] not in ";#"]


def read_rule_file(name: str, stdin: Callable[[], bytes] | None = None) -> bytes:
    """The bytes of a rule file named on the command line (``-``: standard input)."""
    if name == "-":
        if stdin is None:
            raise UsageError("rules from standard input ('-') read twice")
        return stdin()
    try:
        with open(name, "rb") as f:
            return f.read(MAX_RULE_FILE + 1)[:MAX_RULE_FILE]
    except OSError as e:
        raise UsageError(f"failed to open filter file {_show(name)}: "
                         f"{e.strerror or e}") from None


def expand(rules: Iterable[FilterRule], read: Callable[[str], bytes], depth: int = 0
           ) -> list[FilterRule]:
    """The rules with every ``merge`` rule replaced by its file's rules (read
    now, on this side, as rsync does); ``dir-merge`` rules stay.  A ``merge``
    with ``e`` adds an exclude of its own name first."""
    out: list[FilterRule] = []
    for r in rules:
        if r.action != ".":
            out.append(r)
            continue
        if depth >= MAX_MERGE_DEPTH:
            raise UsageError(f"merge-file include depth limit ({MAX_MERGE_DEPTH}) exceeded "
                             f"at {_show(r.pattern)}")
        if "e" in r.mods:
            out.append(FilterRule("-", r.pattern.rsplit("/", 1)[-1]))
        out.extend(expand(file_rules(read(r.pattern), r), read, depth + 1))
    return out


def file_rules(data: bytes, merge: FilterRule) -> list[FilterRule]:
    """The rules in a merge file's content, read with ``merge``'s modifiers."""
    default = "+" if "+" in merge.mods else "-" if "-" in merge.mods else ""
    out: list[FilterRule] = []
    for line in split_lines(data, "w" in merge.mods):
        r = parse_filter(line, merge.side, default)
        if r is not None:
            out.append(r)
    return out


def with_clears(rules: Iterable[FilterRule]) -> tuple[list[FilterRule], bool]:
    """The rules after the last ``!`` (clear), and whether there was one."""
    out: list[FilterRule] = []
    cleared = False
    for r in rules:
        if r.action == "!":
            out.clear()
            cleared = True
        else:
            out.append(r)
    return out, cleared


def from_options(excludes: Iterable[str], filters: Iterable[str], delete_excluded: bool
                 ) -> FilterSet:
    """The rules of ``SyncOptions``: ``excludes`` (``--exclude`` arguments), then
    ``filters`` (rule strings, ``merge`` rules already expanded)."""
    return from_wire(list(excludes), list(filters), delete_excluded)


class DirMerge:
    """The slot of a ``dir-merge`` rule in one side's rules: ``read(fd)`` reads
    the directory's file (through its descriptor, never following a symlink)
    and gives the blocks of this side's rules in it."""

    __slots__ = ("rule", "name", "side", "inherit", "self_rule", "delete_excluded")

    def __init__(self, rule: FilterRule, side: str, delete_excluded: bool) -> None:
        self.rule = rule
        self.name = rule.pattern.lstrip("/")
        self.side = side
        self.inherit = "n" not in rule.mods
        self.delete_excluded = delete_excluded
        self.self_rule: list[Block] = []

    def __repr__(self) -> str:
        return f"DirMerge({self.rule.text()!r})"

    def read(self, fd: int, path: str) -> tuple[list[Block], bool, OSError | None]:
        """(blocks of the file in directory ``path`` (open as ``fd``), keep the
        inherited rules, why the file could not be used).  A pattern with a
        leading "/" is anchored at that directory, as in rsync."""
        import errno as errno_

        def fail(err: int, why: str | None = None) -> tuple[list[Block], bool, OSError]:
            return [], True, OSError(err, f"{self.name}: {why or os.strerror(err)}")

        try:
            ffd = os.open(self.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                          dir_fd=fd)
        except FileNotFoundError:
            return [], True, None
        except OSError as e:
            if e.errno == errno_.EISDIR:
                return [], True, None
            return fail(e.errno or errno_.EIO)
        try:
            import stat

            if not stat.S_ISREG(os.fstat(ffd).st_mode):
                return [], True, None
            chunks, size = [], 0
            while size <= MAX_RULE_FILE:
                b = os.read(ffd, 1 << 16)
                if not b:
                    break
                chunks.append(b)
                size += len(b)
            if size > MAX_RULE_FILE:
                return fail(errno_.EFBIG)
        except OSError as e:
            return fail(e.errno or errno_.EIO)
        finally:
            os.close(ffd)
        try:
            rules, cleared = with_clears(file_rules(b"".join(chunks), self.rule))
            if any(r.action in ".:" for r in rules):
                raise UsageError("merge rules inside a per-directory file are not supported "
                                 "by deltasync")
            rules = [r for r in _resolve(rules, self.delete_excluded) if r.applies(self.side)]
            if path:
                rules = [FilterRule(r.action, "/" + path + r.pattern, r.side, r.negate, r.mods)
                         if r.pattern.startswith("/") else r for r in rules]
            got = _blocks(rules)
        except UsageError as e:
            return fail(errno_.EINVAL, str(e))
        return got, not cleared, None


def _resolve(rules: Iterable[FilterRule], delete_excluded: bool) -> list[FilterRule]:
    """``--delete-excluded``: includes and excludes with no side go to the sender's."""
    if not delete_excluded:
        return list(rules)
    return [FilterRule(r.action, r.pattern, "s", r.negate, r.mods)
            if r.action in "+-" and not r.side else r for r in rules]


def _blocks(rules: list[FilterRule]) -> list[Block]:
    return blocks((r.action == "+", r.negate, _pattern(r)) for r in rules)


def _pattern(r: FilterRule) -> Rule:
    return check_pattern(r.pattern, r.pattern)


def side_filter(rules: Iterable[FilterRule], side: str, delete_excluded: bool) -> SideFilter:
    """The rules of one side (``sender`` or ``receiver``), ``merge`` rules already
    expanded (``expand``)."""
    s = "s" if side == "sender" else "r"
    kept, _ = with_clears(rules)
    resolved = _resolve(kept, delete_excluded)
    wire = [r.text() for r in kept]
    items: list[object] = []
    run: list[FilterRule] = []
    for r in resolved:
        if r.action == ":":
            if "e" in r.mods:  # (both sides, as rsync adds it)
                run.append(FilterRule("-", r.pattern.rsplit("/", 1)[-1]))
            if not r.applies(s):
                continue  # a one-sided dir-merge: the other side never reads its files
            if run:
                items.extend(_blocks(run))
                run = []
            items.append(DirMerge(r, s, delete_excluded))
        elif r.action == ".":
            raise ValueError("merge rules must be expanded first")
        elif r.applies(s):
            run.append(r)
    if run:
        items.extend(_blocks(run))
    return SideFilter(items, True, wire)


class FilterSet:
    """The rules of a pass, for both sides: ``sender`` (what the source's walk
    leaves out) and ``receiver`` (what the replica keeps: never deleted).

    ``rules``: in command-line order, ``merge`` rules expanded.  The receiver's
    listers may leave out subdirectories they exclude only when the two sides
    have the same rules and no per-directory files (then the sender excludes
    them too)."""

    def __init__(self, rules: Iterable[FilterRule] = (), delete_excluded: bool = False) -> None:
        self.rules = list(rules)
        self.delete_excluded = delete_excluded
        self.sender = side_filter(self.rules, "sender", delete_excluded)
        self.receiver = side_filter(self.rules, "receiver", delete_excluded)
        same = (not self.sender.slots and not self.receiver.slots
                and [r for r in with_clears(_resolve(self.rules, delete_excluded))[0]
                     if r.side] == [])
        self.receiver.prunes = same
        self.receiver.wire = self.sender.wire

    def wire(self) -> list[str]:
        return [r.text() for r in self.rules]


def from_wire(excludes: list[str], texts: list[str], delete_excluded: bool) -> FilterSet:
    """The rules a peer sent (``FilterSet.wire``, after ``--exclude`` arguments of
    an older client); UsageError if one does not parse."""
    rules = exclude_arg_rules(excludes)
    for t in texts:
        if not isinstance(t, str):
            raise UsageError(f"filter rule is not a string: {t!r}")
        r = parse_filter(t)
        if r is not None:
            if r.action == ".":
                raise UsageError(f"filter rule {_show(t)}: a merge rule, not expanded")
            rules.append(r)
    return FilterSet(rules, delete_excluded)


if TYPE_CHECKING:
    from collections.abc import Callable
