"""Filter patterns, matched exactly as rsync matches its rules' patterns.

The reference is rsync itself (3.x): ``lib/wildmatch.c`` for the glob and
``exclude.c`` for which part of a path a rule is matched against
(``add_rule`` sets the rule's flags, ``rule_matches`` uses them).

What a pattern is (``make_rule``; the rule syntax around it, ``+ ``/``- ``
prefixes, ``--filter`` rules, is ``rules.py``'s, and what a side does with
matches ``sides.py``'s):

* one trailing ``/`` is removed and limits the rule to directories;
* a pattern with none of ``*``, ``?``, ``[`` is literal: compared byte for
  byte, backslashes included.

What it is matched against (``rule_matches``):

* a leading ``/`` anchors the rule at the transfer root: the whole path;
* no ``/`` and no ``**``: the last component (the name), at any depth;
* a ``/`` (not leading) and no ``**``: the last (slashes + 1) components,
  so ``build/cache`` matches ``build/cache`` and ``x/build/cache``;
* ``**`` not at the start: the path from its start or from after any ``/``;
* ``**`` at the start: ``/`` + the path (so ``**/x`` matches a top-level ``x``);
* a pattern ending in ``***``, for a directory, is matched against the path
  plus ``/``: ``dir/***`` matches ``dir`` itself and everything in it.

The glob (``wildmatch``), on bytes -- the name as the file system has it, so
``?`` is one byte of a UTF-8 name: ``*`` is any run of bytes without ``/``,
``**`` (two or more stars) any run at all, ``?`` one byte but ``/``, ``\\x``
the byte x, ``[...]`` one byte but ``/`` from a class (``!`` or ``^`` first
negates, ``]`` first is literal, ``a-z`` ranges, ``[:alpha:]`` and the other
POSIX classes, ASCII only as in rsync's C and UTF-8 locales).  A pattern that
cannot match anything in wildmatch's reading (an unterminated ``[``, an
unknown ``[:name:]``, a trailing ``\\``) matches nothing, as in rsync.

How it is made fast (the walk asks for every entry of both trees): literal
rules are set and ``endswith`` look-ups, ``*.ext`` rules too; every other
rule is compiled once to a regular expression over the name, or over
``"/" + path`` (``+ "/"`` for a directory), and the rules of one kind are
joined into one alternation, so an entry costs at most one regex call on its
name and two on its path (rules matched from the start, ``fullmatch``; rules
matched after any ``/``, ``search``).  A path that is not ASCII is matched as bytes
(``os.fsencode``) with the bytes twin of the same expression; an ASCII path
gives the same answer either way.  The glob-to-regex translation keeps
wildmatch's cost bound: each ``*`` that is followed by another star takes
the earliest match of what follows it, in an atomic group (exact, because the
next star can absorb any bytes the later choice would have skipped -- the
reason wildmatch may return ABORT_TO_STARSTAR), so ``*a*a*a*b`` does not
backtrack exponentially.  tests/test_excludes.py checks the translation
against a line-by-line port of wildmatch.c, rsync's own wildtest table, and
rsync itself.
"""

from __future__ import annotations

import os

from .errors import UsageError

# The CLI checks --exclude values before it starts ssh, which it does before
# importing anything it can avoid: so no typing, re or model at import time
# (~10 ms); re is imported where expressions are compiled.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import re

    _Pair = tuple[re.Pattern[str], re.Pattern[bytes]]
    _Kind = tuple[frozenset[str], tuple[str, ...], _Pair | None, frozenset[str],
                  tuple[str, ...], _Pair | None, _Pair | None]

# rsync discards (with a message) a pattern this long; refusing it is safer
# than ignoring an exclude the user asked for.
MAX_PATTERN = 4096

_SLASH, _BACKSLASH, _STAR, _QMARK, _LBRACKET, _RBRACKET = b"/\\*?[]"
_DASH, _BANG, _CARET, _COLON = b"-!^:"


def _ascii(pred: str) -> frozenset[int]:
    return frozenset(b for b in range(128) if chr(b) in pred)


_LOWER = _ascii("abcdefghijklmnopqrstuvwxyz")
_UPPER = _ascii("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGIT = _ascii("0123456789")
_GRAPH = frozenset(range(33, 127))
# The classes of lib/wildmatch.c, as glibc's <ctype.h> has them in the C and
# UTF-8 locales: ASCII only (a byte >= 0x80 is in none of them).
_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": _LOWER | _UPPER | _DIGIT,
    b"alpha": _LOWER | _UPPER,
    b"blank": frozenset(b"\t "),
    b"cntrl": frozenset(range(32)) | {127},
    b"digit": _DIGIT,
    b"graph": _GRAPH,
    b"lower": _LOWER,
    b"print": frozenset(range(32, 127)),
    b"punct": _GRAPH - (_LOWER | _UPPER | _DIGIT),
    b"space": frozenset(b"\t\n\v\f\r "),
    b"upper": _UPPER,
    b"xdigit": _DIGIT | _ascii("abcdefABCDEF"),
}
_ALL_BUT_SLASH = frozenset(range(256)) - {_SLASH}


class Rule:
    """One exclude rule, with the flags rsync's ``add_rule`` gives it (``make_rule``)."""

    __slots__ = ("text", "pattern", "dir_only", "wild", "wild2", "wild2_prefix",
                 "wild3_suffix", "slashes")

    def __init__(self, text: str, pattern: bytes) -> None:
        self.text = text  # as given (what is sent to the far side)
        self.dir_only = len(pattern) > 1 and pattern.endswith(b"/")  # FILTRULE_DIRECTORY
        if self.dir_only:
            pattern = pattern[:-1]
        self.pattern = pattern  # without the "- " prefix and the trailing "/"
        self.wild = any(c in pattern for c in b"*?[")  # FILTRULE_WILD
        self.wild2 = self.wild and b"**" in pattern  # FILTRULE_WILD2
        self.wild2_prefix = self.wild2 and pattern.startswith(b"**")  # FILTRULE_WILD2_PREFIX
        self.wild3_suffix = self.wild2 and pattern.endswith(b"***")  # FILTRULE_WILD3_SUFFIX
        self.slashes = pattern.count(b"/")  # u.slash_cnt

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"


def _show(text: str) -> str:
    if text.isprintable():
        return f"'{text}'"
    from .model import quote_path

    return f"'{quote_path(text)}'"


def make_rule(text: str, pattern: bytes) -> Rule:
    """The rule for ``pattern`` (prefix already dropped), flagged as ``add_rule`` does."""
    return Rule(text, pattern)


def check_pattern(pattern: str, text: str) -> Rule:
    """The pattern of a rule (``text``, for messages) as a Rule; UsageError for
    what deltasync refuses: a NUL, a pattern rsync would discard as too long,
    a string no file name decodes to (a peer's JSON)."""
    try:
        b = os.fsencode(pattern)
    except UnicodeEncodeError:
        raise UsageError(f"filter rule {_show(text)}: not a file name string") from None
    if b"\0" in b:
        raise UsageError(f"filter rule {_show(text)}: contains a NUL byte")
    if len(b) >= MAX_PATTERN:
        raise UsageError(f"filter pattern too long ({len(b)} bytes; at most "
                         f"{MAX_PATTERN - 1})")
    return make_rule(pattern, b)


# -- the glob as a regular expression -------------------------------------------
# Tokens: a byte set (a literal, "?", a class: one byte), or a star run.
_ONE, _STAR1, _STAR2 = 0, 1, 2
_Token = tuple[int, frozenset[int]]


def _bracket(p: bytes, i: int) -> tuple[frozenset[int], int] | None:
    """The bracket expression whose ``[`` is at ``i - 1``: (the bytes it matches,
    the index after its closing ``]``), or None when it is malformed (then the
    whole pattern matches nothing, as in rsync).

    The rules, as rsync's matcher applies them (checked against rsync on its own
    test table and on generated cases): ``!`` or ``^`` first negates; a ``]``
    first (after the negation) is a member, any later one closes; ``\\x`` is
    the member ``x``; ``a-z`` is a range when the ``-`` follows a single member
    (not a range or a class) and is not last; ``[:name:]`` is a POSIX class
    (an unknown name is malformed); a ``[:`` with no ``:]`` before the next
    ``]`` is a plain ``[``.  No class ever matches ``/``.
    """
    end = len(p)
    negate = i < end and p[i] in (_BANG, _CARET)
    if negate:
        i += 1
    members: set[int] = set()
    last: int | None = None  # a single member a "-" can start a range from
    first = True
    while True:
        if i >= end:
            return None  # never closed
        c = p[i]
        if c == _RBRACKET and not first:
            break
        first = False
        if c == _BACKSLASH:
            if i + 1 >= end:
                return None
            last = p[i + 1]
            members.add(last)
            i += 2
            continue
        if c == _DASH and last is not None and i + 1 < end and p[i + 1] != _RBRACKET:
            j = i + 1
            if p[j] == _BACKSLASH:
                j += 1
                if j >= end:
                    return None
            members.update(range(last, p[j] + 1))  # empty when reversed
            last = None
            i = j + 1
            continue
        if c == _LBRACKET and i + 1 < end and p[i + 1] == _COLON:
            close = p.find(b"]", i + 2)
            if close < 0:
                return None
            if close > i + 2 and p[close - 1] == _COLON:
                cls = _CLASSES.get(p[i + 2:close - 1])
                if cls is None:
                    return None
                members |= cls
                last = None
                i = close + 1
                continue
            # no ":]" before the next "]": this "[" is a plain member
        members.add(c)
        last = c
        i += 1
    chosen = _ALL_BUT_SLASH - members if negate else frozenset(members) - {_SLASH}
    return chosen, i + 1


def _tokens(p: bytes) -> list[_Token] | None:
    """The pattern as tokens, or None if wildmatch can never match it."""
    out: list[_Token] = []
    i, n = 0, len(p)
    empty: frozenset[int] = frozenset()
    while i < n:
        c = p[i]
        if c == _BACKSLASH:
            if i + 1 == n:
                return None  # compared with the end of the text: never equal
            out.append((_ONE, frozenset((p[i + 1],))))
            i += 2
        elif c == _QMARK:
            out.append((_ONE, _ALL_BUT_SLASH))
            i += 1
        elif c == _STAR:
            j = i
            while j < n and p[j] == _STAR:
                j += 1
            out.append((_STAR2 if j - i > 1 else _STAR1, empty))
            i = j
        elif c == _LBRACKET:
            got = _bracket(p, i + 1)
            if got is None:
                return None
            out.append((_ONE, got[0]))
            i = got[1]
        else:
            out.append((_ONE, frozenset((c,))))
            i += 1
    return out


def _byte_re(b: int) -> str:
    return chr(b) if chr(b).isalnum() and b < 128 else f"\\x{b:02x}"


def _set_re(s: frozenset[int]) -> str:
    if len(s) == 1:
        return _byte_re(next(iter(s)))
    if s == _ALL_BUT_SLASH:
        return "[^/]"
    if not s:
        return "(?!)"
    parts, run = [], sorted(s)
    i = 0
    while i < len(run):
        j = i
        while j + 1 < len(run) and run[j + 1] == run[j] + 1:
            j += 1
        parts.append(f"\\x{run[i]:02x}" if i == j else f"\\x{run[i]:02x}-\\x{run[j]:02x}")
        i = j + 1
    return "[" + "".join(parts) + "]"


def glob_regex(pattern: bytes) -> str | None:
    """A regular expression (source, to compile with re.S, over latin-1 text or as
    bytes) that matches exactly what ``wildmatch(pattern, text)`` matches; None if
    nothing can match.  No anchors: the caller adds them.

    The pattern is chunks of one-byte tokens between star runs.  A ``*`` is
    ``[^/]*`` and ``**`` is ``.*``, but where a star is followed by another
    star, the chunk between them is taken at its earliest position for good
    (an atomic group): a later position of that chunk can only leave more
    bytes for the next star, and the earlier one leaves those bytes to that
    star too (a single ``*`` that the chunk did not cross ``/`` to reach can
    absorb them; ``**`` absorbs anything).  After ``**``, a run of chunks and
    single stars up to the next ``**`` is placed whole at its earliest place
    in the same way.  This is what keeps wildmatch polynomial, here too.
    """
    toks = _tokens(pattern)
    if toks is None:
        return None
    chunks: list[str] = [""]
    stars: list[int] = []
    for kind, s in toks:
        if kind == _ONE:
            chunks[-1] += _set_re(s)
        else:
            stars.append(kind)
            chunks.append("")
    out = [chunks[0]]
    n = len(stars)
    i = 0
    while i < n:
        nxt = chunks[i + 1]
        if stars[i] == _STAR1:
            out.append(f"[^/]*{nxt}" if i == n - 1 else f"(?>[^/]*?{nxt})")
            i += 1
            continue
        j = next((k for k in range(i + 1, n) if stars[k] == _STAR2), None)
        if j is None:  # the last "**": what follows must end the text
            out.append(f".*?{nxt}" if nxt else ".*")
            i += 1
            continue
        inner = "".join(f"(?>[^/]*?{chunks[k + 1]})" for k in range(i + 1, j))
        out.append(f"(?>.*?{nxt}{inner})")
        i = j
    return "".join(out)


def wildmatch(pattern: bytes, text: bytes) -> bool:
    """rsync's ``wildmatch(pattern, text)``: does the whole of ``text`` match?"""
    import re

    src = glob_regex(pattern)
    return src is not None and re.fullmatch(src.encode("latin-1"), text, re.S) is not None


# -- rules as regular expressions --------------------------------------------------
# Subjects: ``name``; ``"/" + path`` for literal path rules; that plus "/" for
# a directory for the path regexes (rsync matches a directory as path + "/"
# only for a "***" rule; for the others that "/" just marks where the text ends).

def _literal_slashes(pattern: bytes) -> int:
    """How many "/" of the text any match of ``pattern`` holds: its "/" tokens
    (a "/" inside a class never matches)."""
    toks = _tokens(pattern)
    return 0 if toks is None else sum(1 for kind, s in toks if kind == _ONE and s == {_SLASH})


def _path_re(rule: Rule, is_dir: bool) -> tuple[bool, str] | None:
    """(is a head rule, source) for a wild rule matched against the path; None if
    it never matches.  Head rules are matched from the start of the subject
    (``fullmatch``); the others are searched for after any "/" (``search``)."""
    pat = rule.pattern
    anchored = pat.startswith(b"/")
    core = glob_regex(pat[1:] if anchored else pat)
    if core is None:
        return None
    end = "/\\Z" if is_dir and not rule.wild3_suffix else "\\Z"
    if rule.wild2_prefix:  # matched against "/" + path: the subject itself
        return True, core + end
    if anchored:
        return True, "/" + core + end
    if not rule.wild2 and _literal_slashes(pat) != rule.slashes:
        # rsync matches the last slashes+1 components; a match of this pattern
        # holds fewer "/" than that text has, so there is none.
        return None
    # From after any "/" of "/" + path.  For a rule without "**" (rsync: the
    # last slashes+1 components) this is the same: a match holds exactly
    # that many "/", so it can only start where those components do.
    return False, "/" + core + end


def _pair(sources: list[str]) -> _Pair | None:
    """One alternation, as text (for ASCII subjects) and as bytes (for the rest)."""
    import re

    if not sources:
        return None
    src = sources[0] if len(sources) == 1 else "(?:" + "|".join(sources) + ")"
    return re.compile(src, re.S), re.compile(src.encode("latin-1"), re.S)


def _kind(rules: list[Rule], is_dir: bool) -> _Kind:
    """What ``excluded`` needs for one kind of entry (file or directory)."""
    names: set[str] = set()     # literal names
    suffixes: list[str] = []    # "*.ext"-style names: name.endswith
    name_res: list[str] = []
    # (like the regexes, these two see a directory's path with a "/" appended)
    whole: set[str] = set()     # "/" + path == the pattern (anchored literals)
    tails: list[str] = []       # "/" + path ends with it (other literals, "**/literal")
    heads: list[str] = []
    anywhere: list[str] = []
    for r in rules:
        if r.dir_only and not is_dir:
            continue
        by_name = r.slashes == 0 and not r.wild2
        if not r.wild:
            lit = os.fsdecode(r.pattern)
            if by_name:
                names.add(lit)
            elif lit.startswith("/"):
                whole.add(lit + "/" if is_dir else lit)
            else:
                tails.append("/" + lit + "/" if is_dir else "/" + lit)
        elif by_name:
            rest = r.pattern[1:]
            if (r.pattern.startswith(b"*") and rest and rest.isascii()
                    and not any(c in rest for c in b"*?[\\")):
                # an ASCII suffix: the same as bytes whatever the name's encoding
                suffixes.append(rest.decode("ascii"))
                continue
            src = glob_regex(r.pattern)
            if src is not None:
                name_res.append(src)
        else:
            rest = r.pattern.lstrip(b"*")
            if (r.wild2_prefix and rest and (rest.isascii() or rest.startswith(b"/"))
                    and not any(c in rest for c in b"*?[\\")):
                # "**/node_modules": "/" + path ends with "/node_modules" (as bytes
                # too: the suffix is ASCII or starts at a "/", a character boundary)
                lit = os.fsdecode(rest)
                tails.append(lit + "/" if is_dir else lit)
                continue
            got = _path_re(r, is_dir)
            if got is not None:
                (heads if got[0] else anywhere).append(got[1])
    return (frozenset(names), tuple(suffixes), _pair(name_res), frozenset(whole),
            tuple(tails), _pair(heads), _pair(anywhere))


def _fits(pair: _Pair, s: str) -> bool:
    if s.isascii():
        return pair[0].fullmatch(s) is not None
    return pair[1].fullmatch(os.fsencode(s)) is not None


class Matcher:
    """A run of pattern rules: ``matches(path, name, is_dir)`` -- does any of them match?

    ``path`` is relative to the root of the tree (no leading ``/``), ``name``
    its last component.  What a rule does when it matches (exclude, include)
    is the caller's business (``SideFilter``): a matcher only groups rules
    of one action, so they cost one look-up together.
    """

    __slots__ = ("rules", "_file", "_dir")

    def __init__(self, rules: list[Rule]) -> None:
        self.rules = rules
        self._file = _kind(rules, False)
        self._dir = _kind(rules, True)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __repr__(self) -> str:
        return f"Matcher({[r.text for r in self.rules]!r})"

    def matches(self, path: str, name: str, is_dir: bool) -> bool:
        # Called for every entry of both walks: the cheap tests first, then at
        # most one regex call on the name and two on the path.
        names, suffixes, name_re, whole, tails, head_re, any_re = (
            self._dir if is_dir else self._file)
        if name in names or (suffixes and name.endswith(suffixes)):
            return True
        if name_re is not None and _fits(name_re, name):
            return True
        if not (whole or tails or head_re is not None or any_re is not None):
            return False
        s = "/" + path + "/" if is_dir else "/" + path
        if s in whole or (tails and s.endswith(tails)):
            return True
        if head_re is None and any_re is None:
            return False
        if s.isascii():  # (inlined _fits: this is the hot path of a walk with path rules)
            return ((head_re is not None and head_re[0].fullmatch(s) is not None)
                    or (any_re is not None and any_re[0].search(s) is not None))
        b = os.fsencode(s)
        return ((head_re is not None and head_re[1].fullmatch(b) is not None)
                or (any_re is not None and any_re[1].search(b) is not None))


def __getattr__(name: str) -> object:
    # The rules of one side (``Excluder`` and friends) moved to ``sides``;
    # importing them from here still works (tests, library callers).
    if name in ("Block", "Excluder", "SideFilter", "TreeFilter", "blocks", "first_match",
                "unit_hidden"):
        from . import sides

        return getattr(sides, name)
    raise AttributeError(name)
