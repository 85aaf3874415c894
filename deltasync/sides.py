"""The filter rules of one side of a transfer, and the state of one walk of one tree.

A side's rules (``SideFilter``) are a list of ``Block`` -- runs of pattern
rules of one action, each run one ``filters.Matcher`` -- and, for each
``dir-merge`` rule, a slot (``rules.DirMerge``) that the per-directory file
of each directory fills while a tree is walked.  An entry is excluded when
the first rule that matches it, in order, is an exclude (``first_match``);
grouping rules of one action into a block answers the same as going rule by
rule, and costs one look-up per block.

A walk asks ``TreeFilter.enter(path, fd)`` for each directory, in walk order:
it reads the directory's per-directory files through the directory's
descriptor (the file of the tree being walked: the source's on the sender's
side, the replica's on the receiver's) and remembers only the directories
from the root to the current one.  ``unit_hidden`` gives a listed
directory's excluded names.
"""

from __future__ import annotations

from .filters import Matcher, Rule

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any


class Block:
    """Consecutive rules of one action: ``include`` or not, ``negate`` (a one-rule
    block of a ``!`` rule: it applies where the pattern does not match)."""

    __slots__ = ("include", "negate", "matcher")

    def __init__(self, include: bool, negate: bool, rules: list[Rule]) -> None:
        self.include, self.negate, self.matcher = include, negate, Matcher(rules)

    def __repr__(self) -> str:
        return f"Block({'+' if self.include else '-'}{'!' if self.negate else ''}, {self.matcher})"


def blocks(rules: Iterable[tuple[bool, bool, Rule]]) -> list[Block]:
    """(include, negate, rule) triples, in order, as blocks (first match wins
    across them exactly as rule by rule: a block holds rules of one action)."""
    out: list[Block] = []
    run: list[Rule] = []
    cur: tuple[bool, bool] | None = None
    for include, negate, rule in rules:
        key = (include, negate)
        if cur != key or negate:
            if run and cur is not None:
                out.append(Block(cur[0], cur[1], run))
            run, cur = [], key
        run.append(rule)
    if run and cur is not None:
        out.append(Block(cur[0], cur[1], run))
    return out


def first_match(chain: list[Block], path: str, name: str, is_dir: bool) -> bool:
    """Is the entry excluded by ``chain``: the action of the first rule that matches
    (no rule matches: not excluded)."""
    for b in chain:
        if b.matcher.matches(path, name, is_dir) != b.negate:
            return not b.include
    return False


class SideFilter:
    """The filter rules of one side of a transfer (the sender's or the receiver's).

    ``items`` are ``Block`` and, for a ``dir-merge`` rule, a slot
    (``rules.DirMerge``) that the rules read from each directory's file fill
    while a tree is walked (``tree()``).  ``excluded(path, name, is_dir)``
    is the answer of the rules given on the command line only (no per-directory
    file): for callers with no walk (progress counts, a directory in the way).
    ``prunes``: a lister may leave out the subdirectories the rules exclude
    (always on the sender's side; on the receiver's only where an entry it
    excludes is certain to be excluded on the sender's side too, so the march
    never needs the unit of a directory that was not walked).
    """

    def __init__(self, items: list[Any] | None = None, prunes: bool = True,
                 wire: list[str] | None = None) -> None:
        self.items: list[Any] = items or []
        self.static = [b for b in self.items if isinstance(b, Block)]
        self.slots = [x for x in self.items if not isinstance(x, Block)]
        self.prunes = prunes
        self.wire = wire or []  # the rules as rule strings (what a far side is sent)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.items!r})"

    def excluded(self, path: str, name: str, is_dir: bool) -> bool:
        return first_match(self.static, path, name, is_dir)

    def tree(self) -> TreeFilter:
        """The state of one walk of one tree (per-directory files read as it goes)."""
        return TreeFilter(self)


class Excluder(SideFilter):
    """rsync's ``--exclude`` arguments as the rules of both sides (library use and
    tests): ``excluded(path, name, is_dir)`` for each entry.  ``+ P`` is an
    include, ``- P`` an exclude, ``!`` clears the rules before it, as rsync
    reads them.  Raises UsageError for a pattern deltasync refuses."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        from .rules import exclude_arg_rules, side_filter

        self.patterns = list(patterns)
        built = side_filter(exclude_arg_rules(self.patterns), "sender", False)
        super().__init__(built.items, True, built.wire)

    def __repr__(self) -> str:
        return f"Excluder({self.patterns!r})"


class TreeFilter:
    """One walk's view of a side's rules: ``enter(path, fd)`` for each directory
    (in walk order) gives the rules its entries are matched against, with the
    rules of the per-directory files (``dir-merge``) of it and its parents.

    Only the directories on the way from the root to the current one are
    remembered: entering a directory forgets those the walk has left."""

    def __init__(self, side: SideFilter) -> None:
        self.side = side
        # (path, inherited per-slot blocks for the subdirectories)
        self._stack: list[tuple[str, list[list[Block]]]] = []

    def enter(self, path: str, fd: int) -> tuple[list[Block], OSError | None]:
        """(the rules of directory ``path``, open as ``fd``; why a per-directory
        file could not be read or parsed: the directory's rules are unknown)."""
        side = self.side
        if not side.slots:
            return side.static, None
        stack = self._stack
        while stack and not (stack[-1][0] == "" or path.startswith(stack[-1][0] + "/")):
            stack.pop()
        if path == "":
            stack.clear()
        parents = stack[-1][1] if stack else [[] for _ in side.slots]
        here: list[list[Block]] = []
        down: list[list[Block]] = []
        error: OSError | None = None
        for slot, inherited in zip(side.slots, parents):
            mine, keeps, err = slot.read(fd, path)
            error = error or err
            local = mine + (inherited if keeps else [])
            here.append(slot.self_rule + local)
            down.append(local if slot.inherit else inherited)
        stack.append((path, down))
        chain: list[Block] = []
        k = 0
        for item in side.items:
            if isinstance(item, Block):
                chain.append(item)
            else:
                chain.extend(here[k])
                k += 1
        return chain, error


def unit_hidden(tree: TreeFilter | None, fd: int, path: str,
                names: Callable[[], list[tuple[str, bool]]],
                ) -> tuple[frozenset[str], OSError | None]:
    """The names of one directory's entries (name, is_dir) that the rules exclude;
    or why its rules are unknown (a per-directory file that cannot be used:
    the directory is then treated as unreadable, so nothing below it is
    deleted).  ``names`` is called only when there are rules to match (a
    walk with per-directory files that are absent decodes no entry)."""
    if tree is None:
        return frozenset(), None
    chain, error = tree.enter(path, fd)
    if error is not None or not chain:
        return frozenset(), error
    prefix = path + "/" if path else ""
    return frozenset(n for n, d in names() if first_match(chain, prefix + n, n, d)), None
