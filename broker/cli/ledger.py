"""`broker ledger …`."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from broker import config as cfg
from broker.cli.common import console, env_config, err_console

if TYPE_CHECKING:
    from broker.transparency.integrity import IntegrityReport


# -- ledger ---------------------------------------------------------------------------------
@click.group()
def ledger() -> None:
    """The append-only, hash-chained ledger."""


@ledger.command("verify")
@click.option("--database-url", default=None, help="Ledger URL (default $BROKER_DATABASE_URL).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--checkpoint", "checkpoint_file", default=None, metavar="FILE",
              help="A checkpoint saved earlier: prove the ledger is an append-only extension of it.")
@click.option("--jwks", default=None, metavar="FILE|URL",
              help="Verify checkpoint signatures with this JWKS (default: the keys in $BROKER_STATE_DIR).")
@click.option("--witness-key", "witness_vkeys", multiple=True, metavar="VKEY",
              help="A trusted witness's verifier key (C2SP vkey, cosignature/v1): its stored"
                   " cosignatures must verify (repeatable; default $BROKER_CHECKPOINT_WITNESS_KEYS).")
def ledger_verify(database_url: str | None, as_json: bool, checkpoint_file: str | None,
                  jwks: str | None, witness_vkeys: tuple[str, ...]) -> None:
    """Recompute the hash chain and the Merkle tree, check the stored checkpoints, the
    witnesses' cosignatures and, with --checkpoint, that the ledger extends that checkpoint:
    exit 0 when all hold, 1 naming the first problem, 3 when the ledger is unreachable."""
    from broker.ledger import LedgerUnavailable, open_ledger
    from broker.transparency.checkpoints import CheckpointError, load_jwks, local_checkpoint_keys
    from broker.transparency.integrity import verify_ledger
    from broker.transparency.note import NoteError
    from broker.transparency.signed_notes import witness_keys

    config = env_config()
    url = database_url or cfg.database_url(config)
    try:
        witnesses = witness_keys(list(witness_vkeys) or config.get("CHECKPOINT_WITNESS_KEYS"))
    except NoteError as exc:
        err_console.print(f"[red]bad witness key[/red]: {exc}")
        sys.exit(2)
    try:
        keys = load_jwks(jwks) if jwks else local_checkpoint_keys(cfg.state_dir(config))
        unverified_checkpoint = None
        if checkpoint_file is not None:
            with open(checkpoint_file, "rb") as fh:
                unverified_checkpoint = json.loads(fh.read())
    except (OSError, ValueError, CheckpointError) as exc:
        err_console.print(f"[red]cannot read[/red] {exc}")
        sys.exit(2)
    try:
        store = open_ledger(url)
        try:
            report = verify_ledger(store, keys=keys, checkpoint=unverified_checkpoint,
                                   witnesses=witnesses)
        finally:
            store.close()
    except LedgerUnavailable as exc:
        err_console.print(f"[red]ledger unreachable[/red] ({cfg.redact_url(url)}): {exc}")
        sys.exit(3)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        sys.exit(0 if report.ok else 1)
    _print_verify_report(report, witnesses=bool(witnesses))
    sys.exit(0 if report.ok else 1)


def _print_verify_report(report: IntegrityReport, *, witnesses: bool) -> None:
    """``broker ledger verify`` for a person: one line per check, problems on stderr."""
    chain, tree = report.chain, report.tree
    if chain.ok:
        console.print(f"ok: {chain.count} events, chain intact")
    else:
        err_console.print(f"[red]TAMPERED[/red]: first bad event seq={chain.first_bad_seq}: "
                          f"{chain.reason} ({chain.count} events read)")
    if tree.ok:
        console.print(f"ok: merkle tree ({tree.tree_size} of {tree.ledger_size} events) matches"
                      " a recomputation from the events")
    else:
        err_console.print(f"[red]TAMPERED[/red]: merkle tree: {tree.reason}")
    signatures = "signatures checked" if report.signatures_checked else "signatures NOT checked (no keys)"
    if report.checkpoint_problems:
        for problem in report.checkpoint_problems:
            err_console.print(f"[red]TAMPERED[/red]: {problem}")
    else:
        console.print(f"ok: {report.checkpoints_checked} stored checkpoint(s) agree, {signatures}")
        if witnesses or report.cosignatures_unknown:
            console.print(f"ok: {report.cosignatures_verified} witness cosignature(s) verified"
                          f" ({report.cosignatures_unknown} by keys not given with --witness-key)")
    if report.extension is not None:
        ext = report.extension
        if ext.ok:
            console.print(f"ok: {ext.reason} (checkpoint root {ext.root_hash},"
                          f" current root {ext.ledger_root})")
        else:
            err_console.print(f"[red]{'FORKED' if ext.forked else 'FAILED'}[/red]: {ext.reason}")


@ledger.command("checkpoint")
@click.option("--database-url", default=None, help="Ledger URL (default $BROKER_DATABASE_URL).")
@click.option("--out", "out_file", default=None, metavar="FILE", help="Write the checkpoint JSON here.")
@click.option("--witness", "witnesses", multiple=True, metavar="URL|FILE",
              help="Publish it: POST JSON to a URL, or append a JSON line to a file (repeatable;"
                   " default $BROKER_CHECKPOINT_WITNESS).")
@click.option("--new", "force", is_flag=True, help="Sign a new checkpoint even if the ledger has not grown.")
@click.option("--note", "note_file", default=None, metavar="FILE",
              help="Also write the checkpoint as a C2SP signed note (with stored cosignatures).")
def ledger_checkpoint(database_url: str | None, out_file: str | None, witnesses: tuple[str, ...],
                      force: bool, note_file: str | None) -> None:
    """Sign a checkpoint of the whole ledger (Merkle tree size and root) with the broker's key,
    store it, save it and publish it outside the broker's database. A witness given as
    tlog-witness+https://… is asked to cosign the signed note (c2sp.org/tlog-witness) and its
    cosignatures are stored."""
    from broker.keys import open_signer
    from broker.ledger import LedgerUnavailable, open_ledger
    from broker.transparency.checkpoints import (
        CheckpointRefused,
        WitnessError,
        checkpoint_now,
        cosign_all,
        publish,
        witness_list,
    )
    from broker.transparency.signed_notes import (
        checkpoint_text,
        cosignatures_for,
        is_tlog_witness,
        signed_note,
        witness_keys,
    )
    from broker.transparency.tree import TreeIntegrityError

    config = env_config()
    url = database_url or cfg.database_url(config)
    signer = open_signer(cfg.text(config, "SIGNER"), state_dir=cfg.state_dir(config),
                         issuer=cfg.issuer(config), retention=24 * 3600)
    chosen = list(witnesses) or witness_list(config.get("CHECKPOINT_WITNESS"))
    failed = False
    try:
        store = open_ledger(url)
        try:
            checkpoint, _ = checkpoint_now(store, signer, issuer=cfg.issuer(config),
                                           state_dir=cfg.state_dir(config), force=force)
            for problem in cosign_all(store, checkpoint, chosen, state_dir=cfg.state_dir(config),
                                      witness_keys=witness_keys(
                                          config.get("CHECKPOINT_WITNESS_KEYS"))):
                err_console.print(f"[red]witness failed[/red]: {problem}")
                failed = True
            note = signed_note(checkpoint, state_dir=cfg.state_dir(config),
                               cosignatures=cosignatures_for(store, checkpoint_text(checkpoint)))
        finally:
            store.close()
    except LedgerUnavailable as exc:
        err_console.print(f"[red]ledger unreachable[/red] ({cfg.redact_url(url)}): {exc}")
        sys.exit(3)
    except (CheckpointRefused, TreeIntegrityError) as exc:
        err_console.print(f"[red]TAMPERED[/red]: refusing to sign: {exc}")
        sys.exit(1)
    document = json.dumps(checkpoint.to_dict(), indent=2)
    if out_file:
        with open(out_file, "w") as fh:
            fh.write(document + "\n")
    if note_file:
        with open(note_file, "w", encoding="utf-8") as fh:
            fh.write(note.render())
    click.echo(document)
    for witness in chosen:
        if is_tlog_witness(witness):
            continue
        try:
            publish(checkpoint, witness)
            err_console.print(f"published to {witness}")
        except WitnessError as exc:
            err_console.print(f"[red]witness failed[/red]: {exc}")
            failed = True
    sys.exit(4 if failed else 0)


@ledger.command("cosign")
@click.argument("note_file", metavar="FILE")
@click.option("--database-url", default=None, help="Ledger URL (default $BROKER_DATABASE_URL).")
def ledger_cosign(note_file: str, database_url: str | None) -> None:
    """Store the witness cosignatures of a signed checkpoint note (e.g. what a witness operated
    out of band returned). The note must be one of this ledger's stored checkpoints; its other
    signature lines are kept, and `broker ledger verify --witness-key` judges them."""
    from broker.ledger import LedgerUnavailable, open_ledger
    from broker.transparency.checkpoints import stored_checkpoints
    from broker.transparency.note import NoteError, parse_checkpoint_text, parse_note
    from broker.transparency.signed_notes import (
        checkpoint_text,
        note_verifier,
        store_cosignatures,
        usable_cosignatures,
        witness_keys,
    )

    config = env_config()
    url = database_url or cfg.database_url(config)
    try:
        with open(note_file, "rb") as fh:
            note = parse_note(fh.read())
        text = parse_checkpoint_text(note.text)
    except (OSError, NoteError, UnicodeDecodeError) as exc:
        err_console.print(f"[red]cannot read[/red] {note_file}: {exc}")
        sys.exit(2)
    try:
        store = open_ledger(url)
        try:
            with store.snapshot() as read:
                known = [c for c in stored_checkpoints(read) if checkpoint_text(c) == text]
            if not known:
                err_console.print("[red]unknown checkpoint[/red]: the note is not one of this"
                                  " ledger's stored checkpoints")
                sys.exit(1)
            own = note_verifier(cfg.state_dir(config), known[0].issuer)
            lines = usable_cosignatures(note.text, note.signatures,
                                        witness_keys(config.get("CHECKPOINT_WITNESS_KEYS")), own=own)
            count = store_cosignatures(store, text, lines)
        finally:
            store.close()
    except LedgerUnavailable as exc:
        err_console.print(f"[red]ledger unreachable[/red] ({cfg.redact_url(url)}): {exc}")
        sys.exit(3)
    console.print(f"stored {count} cosignature(s) of tree size {text.tree_size}")


@ledger.command("verify-proof")
@click.option("--proof", required=True, metavar="FILE|URL", help="Inclusion or consistency proof JSON.")
@click.option("--checkpoint", "checkpoints", required=True, multiple=True, metavar="FILE|URL",
              help="A checkpoint the proof must be anchored to (repeatable).")
@click.option("--jwks", required=True, metavar="FILE|URL", help="The broker's JWKS.")
@click.option("--issuer", default=None, help="Require checkpoints from this broker (its iss).")
def ledger_verify_proof(proof: str, checkpoints: tuple[str, ...], jwks: str,
                        issuer: str | None) -> None:
    """Check a proof against signed checkpoints, offline: exit 0 verified, 1 invalid proof or
    checkpoint, 2 forked log, 3 unreadable input."""
    from broker.transparency.verify_offline import run

    sys.exit(run(proof, list(checkpoints), jwks, issuer=issuer))
