"""A line-by-line port of rsync's lib/wildmatch.c and exclude.c's rule_matches.

The oracle of tests/test_excludes.py: slow (recursive, one byte at a time)
but close enough to the C to check by eye, so the fast regex translation in
deltasync/filters.py can be compared with it on random patterns and paths.
Names and structure follow rsync (3.x, lib/wildmatch.c ``dowild``,
``wildmatch_array``, ``trailing_N_elements``; exclude.c ``add_rule`` flags,
``rule_matches``).  Strings are ``bytes``; the virtual concatenation of
rsync's string arrays is a plain concatenation here (it is only ever that).

Licence: a port of code from rsync, which is GPL-3.0-or-later; this file is
therefore distributed under GPL-3.0-or-later, unlike the rest of deltasync
(MIT).  It is a test: not part of the installed package, and nothing in
``deltasync/`` is derived from it.
"""

from __future__ import annotations

TRUE, FALSE, ABORT_ALL, ABORT_TO_STARSTAR = 1, 0, -1, -2

_CLASS_TESTS = {
    b"alnum": lambda c: chr(c).isalnum(),
    b"alpha": lambda c: chr(c).isalpha(),
    b"blank": lambda c: c in b" \t",
    b"cntrl": lambda c: c < 32 or c == 127,
    b"digit": lambda c: chr(c).isdigit(),
    b"graph": lambda c: 33 <= c <= 126,
    b"lower": lambda c: chr(c).islower(),
    b"print": lambda c: 32 <= c <= 126,
    b"punct": lambda c: 33 <= c <= 126 and not chr(c).isalnum(),
    b"space": lambda c: c in b" \t\n\v\f\r",
    b"upper": lambda c: chr(c).isupper(),
    b"xdigit": lambda c: chr(c) in "0123456789abcdefABCDEF",
}


def _is_class(name: bytes, c: int) -> bool | None:
    test = _CLASS_TESTS.get(name)
    if test is None:
        return None
    return c < 128 and test(c)


def dowild(p: bytes, text: bytes, pi: int = 0, ti: int = 0) -> int:
    def P(k: int) -> int:
        return p[k] if k < len(p) else 0

    while P(pi):
        p_ch = P(pi)
        if ti >= len(text):
            if p_ch != ord("*"):
                return ABORT_ALL
            t_ch = 0
        else:
            t_ch = text[ti]
        if p_ch == ord("\\"):
            pi += 1
            p_ch = P(pi)
            if t_ch != p_ch:
                return FALSE
        elif p_ch == ord("?"):
            if t_ch == ord("/"):
                return FALSE
        elif p_ch == ord("*"):
            pi += 1
            if P(pi) == ord("*"):
                while True:
                    pi += 1
                    if P(pi) != ord("*"):
                        break
                special = True
            else:
                special = False
            if not P(pi):
                if not special and ord("/") in text[ti:]:
                    return FALSE
                return TRUE
            while True:
                if ti >= len(text):
                    break
                t_ch = text[ti]
                matched = dowild(p, text, pi, ti)
                if matched != FALSE:
                    if not special or matched != ABORT_TO_STARSTAR:
                        return matched
                elif not special and t_ch == ord("/"):
                    return ABORT_TO_STARSTAR
                ti += 1
            return ABORT_ALL
        elif p_ch == ord("["):
            pi += 1
            p_ch = P(pi)
            if p_ch == ord("^"):
                p_ch = ord("!")
            special = p_ch == ord("!")
            if special:
                pi += 1
                p_ch = P(pi)
            prev_ch = 0
            matched = False
            while True:  # do { ... } while (prev_ch = p_ch, (p_ch = *++p) != ']')
                if not p_ch:
                    return ABORT_ALL
                if p_ch == ord("\\"):
                    pi += 1
                    p_ch = P(pi)
                    if not p_ch:
                        return ABORT_ALL
                    if t_ch == p_ch:
                        matched = True
                elif p_ch == ord("-") and prev_ch and P(pi + 1) and P(pi + 1) != ord("]"):
                    pi += 1
                    p_ch = P(pi)
                    if p_ch == ord("\\"):
                        pi += 1
                        p_ch = P(pi)
                        if not p_ch:
                            return ABORT_ALL
                    if prev_ch <= t_ch <= p_ch:
                        matched = True
                    p_ch = 0
                elif p_ch == ord("[") and P(pi + 1) == ord(":"):
                    pi += 2
                    s = pi
                    while P(pi) and P(pi) != ord("]"):
                        pi += 1
                    p_ch = P(pi)
                    if not p_ch:
                        return ABORT_ALL
                    i = pi - s - 1
                    if i < 0 or p[pi - 1] != ord(":"):
                        pi = s - 2
                        p_ch = ord("[")
                        if t_ch == p_ch:
                            matched = True
                    else:
                        r = _is_class(p[s:s + i], t_ch)
                        if r is None:
                            return ABORT_ALL
                        if r:
                            matched = True
                        p_ch = 0
                else:
                    if t_ch == p_ch:
                        matched = True
                prev_ch = p_ch
                pi += 1
                p_ch = P(pi)
                if p_ch == ord("]"):
                    break
            if matched == special or t_ch == ord("/"):
                return FALSE
        else:
            if t_ch != p_ch:
                return FALSE
        pi += 1
        ti += 1
    return TRUE if ti >= len(text) else FALSE


def wildmatch(pattern: bytes, text: bytes) -> bool:
    return dowild(pattern, text) == TRUE


def trailing_n_elements(text: bytes, count: int) -> bytes | None:
    for k in range(len(text) - 1, -1, -1):
        if text[k] == ord("/"):
            count -= 1
            if not count:
                return text[k + 1:]
    return text if count == 1 else None


def wildmatch_array(pattern: bytes, text: bytes, where: int) -> bool:
    if where > 0:
        t = trailing_n_elements(text, where)
        if t is None:
            return False
        text = t
    matched = dowild(pattern, text)
    if matched != TRUE and where < 0 and matched != ABORT_ALL:
        ti = 0
        while True:
            if ti >= len(text):
                return False
            ti += 1
            if text[ti - 1] == ord("/"):
                matched = dowild(pattern, text, 0, ti)
                if matched != FALSE and matched != ABORT_TO_STARSTAR:
                    break
    return matched == TRUE


def rule_matches(arg: bytes, fname: bytes, is_dir: bool) -> bool:
    """Does the ``--exclude arg`` rule match path ``fname`` (relative, no leading /)?"""
    pat = arg
    directory = False
    if len(pat) > 1 and pat.endswith(b"/"):
        pat = pat[:-1]
        directory = True
    slash_cnt = pat.count(b"/")
    wild = any(c in pat for c in b"*[?")
    wild2 = wild and b"**" in pat
    wild2_prefix = wild2 and pat.startswith(b"**")
    wild3_suffix = wild2 and len(pat) >= 3 and pat.endswith(b"***")

    name = fname
    if not name:
        return False
    pre = b""
    if not slash_cnt and not wild2:
        name = name.rsplit(b"/", 1)[-1]
    elif wild2_prefix:
        pre = b"/"
    string = pre + name
    str_cnt = 2 if pre else 1
    if is_dir:
        if wild3_suffix:
            string += b"/"
            str_cnt += 1
    elif directory:
        return False
    anchored = pat.startswith(b"/")
    if anchored:
        pat = pat[1:]
    if not anchored and slash_cnt and not wild2:
        where = slash_cnt + 1
    elif not anchored and not wild2_prefix and wild2:
        where = -1
    else:
        where = 0
    if wild:
        return wildmatch_array(pat, string, where)
    if str_cnt > 1:
        return string == pat  # litmatch_array (where is 0 here)
    if anchored:
        return name == pat
    l1, l2 = len(name), len(pat)
    return l2 <= l1 and name[l1 - l2:] == pat and (l1 == l2 or name[l1 - l2 - 1] == ord("/"))
