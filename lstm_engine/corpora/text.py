"""Reading a corpus file: UTF-8 (or a named encoding) with one-line errors for the usual mistakes."""
from __future__ import annotations

import os

from ..errors import UserError
from ..core.resources import check_fits_memory
from ..storage.files import open_regular

VOCAB_LIMIT = 50_000      # more distinct symbols than this needs an explicit --max-vocab
READ_BYTES_PER_BYTE = 6   # the bytes read plus the decoded text (up to 4 bytes a character) and some slack


def read_text_file(path, encoding="utf-8", strict=True):
    """Read a UTF-8 (or --encoding) text file; one-line UserErrors for the usual mistakes.

    strict=False accepts empty files and NUL characters (for `corpus info` on any file)."""
    if not os.path.exists(path):
        raise UserError(f"corpus file {path!r} does not exist; pass a path to a text file or a corpus name "
                        f"(see `lstm-engine corpus list`)")
    if os.path.isdir(path):
        raise UserError(f"corpus {path!r} is a directory; pass a text file inside it")
    f, size = open_regular(path, "corpus file",
                           lambda why: UserError(f"corpus {path!r} is not a regular file ({why}); pass a text file"))
    with f:
        check_fits_memory(size * READ_BYTES_PER_BYTE, f"corpus file {path!r} ({size:,} bytes)",
                          "pass a smaller file (split the text) or train on a machine with more memory")
        try:
            raw = f.read()
        except OSError as e:
            raise UserError(f"cannot read corpus file {path!r}: {e.strerror or e}") from None
    if not raw and strict:
        raise UserError(f"corpus file {path!r} is empty; pass a file with text in it")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff") and not encoding.lower().replace("-", "").startswith("utf16"):
        raise UserError(f"corpus file {path!r} starts with a UTF-16 byte-order mark; pass --encoding utf-16")
    if strict and b"\x00" in raw[:65536] and not encoding.lower().replace("-", "").startswith(("utf16", "utf32")):
        raise UserError(f"corpus file {path!r} looks binary (it contains NUL bytes); pass a plain text file")
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"corpus file {path!r} is not valid {encoding} (byte {e.start}, line {line}); "
                        f"pass --encoding with the file's encoding (e.g. --encoding latin-1)") from None
    except LookupError:
        raise UserError(f"unknown encoding {encoding!r}; pass a Python codec name such as utf-8 or latin-1") from None
