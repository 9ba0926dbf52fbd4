"""A small corpus of records with known answers, for the API, server and adapters."""

from __future__ import annotations

RECORDS = [
    {
        "id": "sqlite-journal",
        "title": "Atomic commit in SQLite",
        "source": "notes/sqlite.md",
        "text": "SQLite writes the original pages to a rollback journal before "
        "changing the database file, so after a power failure it restores "
        "them and the transaction is rolled back.",
        "metadata": {"category": "databases", "year": 2004},
    },
    {
        "id": "sqlite-wal",
        "title": "Write-ahead logging",
        "source": "notes/sqlite.md",
        "text": "In WAL mode changes are appended to a separate write-ahead log, "
        "and a checkpoint copies them back into the database file.",
        "metadata": {"category": "databases", "year": 2010},
    },
    {
        "id": "rust-ownership",
        "title": "Ownership",
        "source": "notes/rust.md",
        "text": "Each value in Rust has a single owner; when the owner goes out "
        "of scope the value is dropped and its memory is freed.",
        "metadata": {"category": "languages", "year": 2015},
    },
    {
        "id": "rust-channels",
        "title": "Message passing",
        "source": "notes/rust.md",
        "text": "Threads can communicate by sending values through a channel: "
        "one end transmits and the other end receives.",
        "metadata": {"category": "languages", "year": 2015},
    },
    {
        "id": "cats",
        "title": "Cats",
        "source": "notes/pets.txt",
        "text": "Cats sleep for most of the day, often on a warm windowsill.",
        "metadata": {"category": "animals", "year": 2020},
    },
    {
        "id": "apollo",
        "title": "The space program",
        "source": "notes/space.txt",
        "text": "The nation committed itself to landing a man on the moon and "
        "returning him safely to the earth before the decade is out.",
        "metadata": {"category": "history", "year": 1961},
    },
]

DATABASE_QUESTION = "How does SQLite recover a transaction after a crash?"
