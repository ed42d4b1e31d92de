"""Small files with real signatures, for the document tests."""

import os

PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(64)
TEXT = "The letter about the knee MRI: no tear of the meniscus. Grüße.\n".encode()


def pdf(size: int) -> bytes:
    """A PDF-looking body of `size` bytes."""
    return PDF + b"%" * (size - len(PDF))
