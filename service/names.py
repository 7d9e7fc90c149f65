"""Usernames: which strings are names (RFC 8265 PRECIS), and which names collide (UTS #39).

A name is one or more userparts separated by single spaces (RFC 8265 section 3.5
lets an application allow spaces this way); each part must pass PRECIS's
UsernameCasePreserved profile (precis-i18n), which maps full-width forms to their
ordinary ones and refuses default-ignorable code points (invisible joiners,
variation selectors, Hangul fillers), compatibility forms, controls and unassigned
code points, and applies the bidi rule. On top of PRECIS, the contract keeps a name
to letters (any script), combining marks after a letter, digits and `_ - .`.

Two names collide when their UTS #39 confusable skeletons (of the canonical, case-
folded form) are equal: "alice9" spelt with a Cyrillic a, or with a Greek iota for the
i, is "alice9". Skeletons come from ICU's SpoofChecker (PyICU), the reference implementation,
with ICU's current Unicode data.
"""

from __future__ import annotations

import unicodedata

import icu
from precis_i18n import get_profile

from service.errors import invalid

MAX_USERNAME = 32
# Normalising can lengthen a name (NFKC turns U+FDFA into 18 letters); the store's key
# column holds 191 characters, so three times the display length is the ceiling.
MAX_CANONICAL = 3 * MAX_USERNAME
_PUNCTUATION = {"_", "-", "."}
_PROFILE = get_profile("UsernameCasePreserved")
# A checker holds only ICU's confusable tables; getSkeleton does not change it.
_SPOOF = icu.SpoofChecker()
# Names are indexed by skeleton; when ICU's data changes, the index is rebuilt.
SKELETON_VERSION = f"uts39-icu{icu.ICU_VERSION}"
_ALLOWED = "Usernames can use letters, digits, spaces and _ - . only"


def canonical(name: str) -> str:
    """The form names are compared in: uniqueness ignores case (and Unicode width forms)."""
    return unicodedata.normalize("NFKC", name).casefold()


def lookup(raw: str) -> str | None:
    """The canonical form to look a name up by, without today's rules for new names:
    names registered before a rule tightened (grandfathered) can still be found,
    edited and deleted. None when no stored name could match."""
    display = unicodedata.normalize("NFC", raw).strip()
    if not display or len(display) > MAX_USERNAME:
        return None
    return canonical(display)


def skeleton(canon: str) -> str:
    """The UTS #39 skeleton of a canonical name: equal for names that look alike."""
    return str(_SPOOF.getSkeleton(0, canon))


def username(raw: object) -> tuple[str, str]:
    """Return (display, canonical) for a valid name, or raise 422 with a sentence for the player."""
    if not isinstance(raw, str):
        raise invalid("invalid_username", "The username must be text.")
    parts = [part for part in unicodedata.normalize("NFC", raw).strip().split(" ") if part]
    if not parts:
        raise invalid("invalid_username", "Please choose a username: it cannot be empty.")
    if sum(len(part) for part in parts) + len(parts) - 1 > MAX_USERNAME:
        raise invalid(
            "invalid_username", f"That username is too long: at most {MAX_USERNAME} characters."
        )
    display = " ".join(_userpart(part) for part in parts)
    if len(display) > MAX_USERNAME:
        raise invalid(
            "invalid_username", f"That username is too long: at most {MAX_USERNAME} characters."
        )
    canon = canonical(display)
    if len(canon) > MAX_CANONICAL:
        raise invalid("invalid_username", "That username is too long once normalised.")
    return display, canon


def _userpart(part: str) -> str:
    """One space-free part of a name, as PRECIS enforces it, or 422 naming the culprit."""
    try:
        enforced = str(_PROFILE.enforce(part))
    except UnicodeEncodeError as exc:
        raise invalid("invalid_username", _why(exc)) from None
    for index, char in enumerate(enforced):
        category = unicodedata.category(char)
        # Marks (M*) carry vowels and accents in many scripts; they may follow a letter.
        allowed = (
            category[0] == "L"
            or category == "Nd"
            or char in _PUNCTUATION
            or (category[0] == "M" and index > 0)
        )
        if not allowed:
            raise invalid("invalid_username", f"{_ALLOWED}, so {_describe(char)} is not allowed.")
    return enforced


def _why(exc: UnicodeEncodeError) -> str:
    """A sentence a player understands for a PRECIS refusal."""
    kind = exc.reason.partition("/")[2]
    if kind == "bidi_rule":
        return (
            "That username mixes right-to-left and left-to-right writing, or starts with a"
            " digit before right-to-left letters, in a way that would display ambiguously."
        )
    if exc.end - exc.start != 1:  # about the whole part, not one character
        return f"{_ALLOWED}."
    char = exc.object[exc.start]
    if kind in ("precis_ignorable_properties", "old_hangul_jamo") or _blank(char):
        return f"A username cannot contain {_describe(char, show=False)}: it is invisible."
    if kind == "has_compat":
        return (
            f"A username cannot contain {_describe(char)}, a compatibility form;"
            " type the ordinary letters instead."
        )
    if kind == "unassigned":
        return f"A username cannot contain {_describe(char)}, which Unicode does not define."
    return f"{_ALLOWED}, so {_describe(char)} is not allowed."


def _blank(char: str) -> bool:
    return unicodedata.category(char) in ("Cf", "Zs", "Zl", "Zp", "Mn", "Me")


def _describe(char: str, *, show: bool = True) -> str:
    """'<' (U+003C LESS-THAN SIGN), or only the code point and name of an invisible one."""
    code = f"U+{ord(char):04X} {unicodedata.name(char, 'UNNAMED')}"
    if show and char.isprintable() and not _blank(char):
        return f"{char!r} ({code})"
    return code
