"""The signed note format of audit checkpoints, against the reference vector of Go's
golang.org/x/mod/sumdb/note, and the notes a verifier must refuse."""

from __future__ import annotations

import base64

import pytest

from storage.core.checkpoints import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    CheckpointKeys,
    NoteSigner,
    NoteVerifier,
    generate_key,
)

# the example key and note of golang.org/x/mod/sumdb/note's documentation (data only):
# Ed25519 is deterministic, so the same key signing the same text gives these bytes
GO_SIGNER = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VERIFIER = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
HEAD = "a3" * 32


def test_notes_match_gos_reference_byte_for_byte() -> None:
    signer = NoteSigner.parse(GO_SIGNER)
    assert signer.sign(GO_TEXT) == GO_NOTE
    assert signer.verifier().encoded() == GO_VERIFIER and signer.encoded() == GO_SIGNER
    verifier = NoteVerifier.parse(GO_VERIFIER)
    assert CheckpointKeys(signer, (verifier,)).open(GO_NOTE) == GO_TEXT
    assert "AYEKFALV" not in repr(signer)


def test_a_checkpoint_round_trips_and_names_only_the_organization() -> None:
    keys = CheckpointKeys.parse(generate_key("audit.example.com").encoded())
    checkpoint = Checkpoint("org_abc123", 42, HEAD)
    note = keys.signer.sign(checkpoint.text())
    origin, size, root, blank, signature, end = note.split("\n")
    assert (origin, size, blank, end) == ("meshgate/audit/org_abc123", "42", "", "")
    assert base64.b64decode(root) == bytes.fromhex(HEAD)
    assert signature.startswith("\u2014 audit.example.com ")
    assert Checkpoint.parse(keys.open(note)) == checkpoint


def test_altered_unknown_and_malformed_notes_are_refused() -> None:
    current, previous, stranger = (generate_key("audit.example.com") for _ in range(3))
    keys = CheckpointKeys.parse(f"{current.encoded()}\n{previous.verifier().encoded()}")
    text = Checkpoint("org_abc123", 42, HEAD).text()
    assert keys.open(previous.sign(text)) == text  # a rotated-out key still verifies
    with pytest.raises(CheckpointError, match="signed by no key of this server"):
        keys.open(stranger.sign(text))
    note = current.sign(text)
    for altered in (note.replace("\n42\n", "\n43\n"), note.replace("org_abc123", "org_abc124")):
        with pytest.raises(CheckpointError, match="does not verify: the checkpoint was altered"):
            keys.open(altered)
    # an unknown key's signature beside a known one is ignored (c2sp.org/signed-note)
    both = note + stranger.sign(text).split("\n\n", 1)[1]
    assert keys.open(both) == text
    for bad in (
        text,  # no signature
        note.replace("\u2014", "-"),
        note.rstrip("\n"),
        note.replace("\n42\n", "\n4\x002\n"),
        "x" * (MAX_NOTE_BYTES + 1),
        text
        + "\n"
        + "".join(stranger.sign(text).split("\n\n")[1] for _ in range(MAX_SIGNATURES + 1)),
    ):
        with pytest.raises(CheckpointError):
            keys.open(bad)
    for body in (
        "meshgate/audit/org_a\n042\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "other/org_a\n42\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "meshgate/audit/org_a\n42\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "meshgate/audit/org_a\n42\n" + base64.b64encode(bytes(32)).decode() + "\nextension\n",
    ):
        with pytest.raises(CheckpointError):
            Checkpoint.parse(body)


def test_bad_keys_are_refused_without_echoing_them() -> None:
    signer = generate_key("audit.example.com")
    seed = signer.encoded().rsplit("+", 1)[1]
    for bad in (
        signer.encoded().replace("audit.example.com", "other.example.com"),  # id mismatch
        signer.verifier().encoded(),  # a verifier key cannot sign
        "PRIVATE+KEY+has space+00000000+" + seed,
        signer.encoded()[:-4],
    ):
        with pytest.raises(CheckpointError) as info:
            CheckpointKeys.parse(bad)
        assert seed not in str(info.value)
    with pytest.raises(CheckpointError, match="same name and id"):
        CheckpointKeys.parse(f"{signer.encoded()},{signer.verifier().encoded()}")
