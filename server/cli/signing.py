"""`tagrun keys ...` and the signing behind `--sign-key` (docs/signing.md).

A signing key is held by whoever deploys or submits, never by the server: the CLI signs on
the submitter's machine and sends only the signature. For a job of a deployed script it
signs the version it read from the server (and pins the job to that version); when that
version was signed at deploy by the same key, the signature is checked first, so a server
that changed the script cannot have it signed again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from tagrun.server.cli.client import Client, fail
from tagrun.server.tags import TagError, resolve_tag
from tagrun.shared import signing

app = typer.Typer(help="Keys that sign jobs, for agents that verify them (docs/signing.md).",
                  no_args_is_help=True)

SignKey = Annotated[Path | None, typer.Option(
    "--sign-key", envvar="TAGRUN_SIGNING_KEY",
    help="Sign with this private key (tagrun keys generate), for agents that verify.")]
UnsignedArgs = Annotated[bool, typer.Option(
    "--unsigned-args", help="Leave the args out of the signature (they may then change).")]


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="Where to write the private key (0600); the "
                                           "public key goes beside it, with .pub added.")]
    = Path("tagrun-signing.key"),
    key_id: Annotated[str | None, typer.Option(
        help="Its id, as agents' key files and job pages show it (default: from the key).")]
    = None,
) -> None:
    """Make an Ed25519 key pair: a private key that signs, a public key line for agents."""
    public = out.with_name(out.name + ".pub")
    for path in (out, public):
        if path.exists():
            fail(f"{path} exists already: choose another --out (a key is never overwritten)")
    try:
        key, private = signing.generate(key_id)
    except signing.SigningError as exc:
        fail(str(exc))
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror}")
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public.write_text(key.public_line() + "\n", encoding="utf-8")
    typer.echo(f"private key: {out} (0600: it signs jobs, keep it secret)")
    typer.echo(f"public key:  {public} (add its line to the file AGENT_VERIFY_KEYS names)")
    typer.echo(key.public_line())


@app.command("public")
def public(key_file: Annotated[Path, typer.Argument(help="A private key file.")]) -> None:
    """Print the public key line of a private key, for AGENT_VERIFY_KEYS files."""
    typer.echo(load(key_file).public_line())


def load(path: Path) -> signing.SigningKey:
    try:
        return signing.load_signing_key(path)
    except signing.SigningError as exc:
        fail(f"--sign-key (TAGRUN_SIGNING_KEY): {exc}")


def _tag(template: str, workspace: str, args: dict[str, Any], what: str) -> str:
    try:
        return resolve_tag(template, workspace, args)
    except TagError as exc:
        fail(f"cannot sign {what}: its tag {template!r}: {exc}")


def _sign(key: signing.SigningKey, unsigned_args: bool, **fields: Any) -> dict[str, Any]:
    try:
        data = signing.payload(**fields, unsigned_args=unsigned_args)
    except ValueError as exc:
        fail(f"cannot sign: {exc}")
    return {"key_id": key.key_id, "sig": key.sign(data), "unsigned_args": unsigned_args}


def sign_inline(body: dict[str, Any], workspace: str, key: signing.SigningKey,
                unsigned_args: bool) -> None:
    """Sign an inline job's body in place."""
    tag = _tag(body.get("tag") or body["language"], workspace, body["args"], "this job")
    body["signature"] = _sign(
        key, unsigned_args, workspace=workspace, script=None, version=None,
        language=body["language"], content=body["content"], tag=tag,
        timeout_s=body.get("timeout_s"), secrets=body.get("secrets", []), args=body["args"])


def sign_script_job(client: Client, body: dict[str, Any], workspace: str,
                    key: signing.SigningKey, unsigned_args: bool) -> None:
    """Sign a script job's body in place, pinned to the version read now."""
    script = client.get(f"/api/w/{workspace}/scripts/{body['script']}")
    what = f"script {script['path']} version {script['version']}"
    _check_deployed(script, key, workspace, what)
    tag = _tag(body.get("tag") or script["tag"] or script["language"], workspace, body["args"],
               "this job")
    timeout_s = body["timeout_s"] if body.get("timeout_s") is not None else script["timeout_s"]
    body["script_version"] = script["version"]
    body["signature"] = _sign(
        key, unsigned_args, workspace=workspace, script=script["path"],
        version=script["version"], language=script["language"], content=script["content"],
        tag=tag, timeout_s=timeout_s, secrets=[*script["secrets"], *body.get("secrets", [])],
        args=body["args"])


def _check_deployed(script: dict[str, Any], key: signing.SigningKey, workspace: str,
                    what: str) -> None:
    """A version signed at deploy by this key must still match that signature; otherwise
    say what is being vouched for."""
    deployed = script.get("signature")
    if deployed and deployed.get("key_id") == key.key_id:
        try:
            data = _deployed_payload(script, workspace)
        except TagError:  # a tag that needs args was never signed at deploy
            data = b""
        if not data or not signing.verifies(key.key.public_key(), str(deployed.get("sig")),
                                            data):
            fail(f"{what} as the server returned it does not match the signature it was "
                 "deployed with: refusing to sign it")
        return
    signer = f"signed at deploy by key {deployed.get('key_id')!r}" if deployed \
        else "deployed unsigned"
    typer.secho(f"warning: {what} was {signer}; signing the content the server returned",
                fg=typer.colors.YELLOW, err=True)


def _deployed_payload(script: dict[str, Any], workspace: str) -> bytes:
    """What a deploy signs: that version, its tag as resolved without args (TagError if it
    needs some), its args left out."""
    return signing.payload(
        workspace=workspace, script=script["path"], version=script["version"],
        language=script["language"], content=script["content"],
        tag=resolve_tag(script["tag"] or script["language"], workspace, {}),
        timeout_s=script["timeout_s"], secrets=script["secrets"], args=None,
        unsigned_args=True)


def sign_deploy(client: Client, body: dict[str, Any], workspace: str,
                key: signing.SigningKey) -> None:
    """Sign a deploy's body in place: the version it will become, its args left out (each
    job's args may differ), so that its jobs and schedules run signed."""
    latest = client.get_optional(f"/api/w/{workspace}/scripts/{body['path']}")
    body["version"] = (latest["version"] if latest else 0) + 1
    version = {"path": body["path"], "version": body["version"], "language": body["language"],
               "content": body["content"], "tag": body.get("tag"),
               "timeout_s": body.get("timeout_s"), "secrets": body.get("secrets", [])}
    try:
        data = _deployed_payload(version, workspace)
    except TagError:
        fail(f"cannot sign script {body['path']} at deploy: its tag "
             f"{body.get('tag')!r} depends on its args; deploy it unsigned and sign each job "
             "(tagrun job run --script ... --sign-key ...)")
    body["signature"] = {"key_id": key.key_id, "sig": key.sign(data), "unsigned_args": True}
