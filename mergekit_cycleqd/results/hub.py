"""Upload model folders to the Hugging Face Hub: one repository per model, one atomic commit each.

Re-running after a failure re-commits what failed and skips a repository that already
holds identical files. A repository with files but no CycleQD card is never touched.
The token is never printed, logged or written, and is scrubbed from any error text."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mergekit_cycleqd.errors import PublishError
from mergekit_cycleqd.results.model_card import (
    ARCHIVE_IMAGE,
    CYCLEQD_TAG,
    MERGEKIT_CONFIG,
    CardInfo,
    parse_front_matter,
    render_card,
)

logger = logging.getLogger(__name__)

# Files a model folder may hold that must not be published as-is: mergekit's own
# card (replaced by ours) and its config (replaced by the Hub-id version).
_REPLACED = {"README.md", MERGEKIT_CONFIG}

_HUB_OWNED = {".gitattributes"}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class PublishItem:
    """One model to publish: a short name, its materialised folder, its card.

    ``extra_files`` maps a path in the repository to a local file shipped with the
    model (e.g. the genome the mergekit config refers to).
    """

    name: str
    model_dir: Path
    card: CardInfo
    extra_files: dict[str, Path] = field(default_factory=dict)


@dataclass
class PublishedModel:
    name: str
    repo_id: str
    folder: Path
    status: str  # "committed", "unchanged" or "dry-run"
    commit_url: str | None = None


@dataclass
class PublishResult:
    models: list[PublishedModel] = field(default_factory=list)
    dry_run: bool = False

    def summary(self) -> str:
        lines = []
        for m in self.models:
            where = m.commit_url or str(m.folder)
            lines.append(f"{m.name}: {m.status} -> {m.repo_id} ({where})")
        return "\n".join(lines)

    __str__ = summary


def repo_ids_for(repo_id: str, names: Sequence[str]) -> list[str]:
    """``repo_id`` for a single model, ``<repo_id>-<name>`` for each of several."""
    if repo_id.count("/") != 1 or not all(_NAME.match(p) for p in repo_id.split("/")):
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}")
    for name in names:
        if not _NAME.match(name):
            raise PublishError(f"model name {name!r} cannot be part of a Hub repository name")
    if len(set(names)) != len(names):
        raise PublishError(f"model names must be distinct, got {list(names)}")
    ids = [repo_id] if len(names) == 1 else [f"{repo_id}-{name}" for name in names]
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    for candidate in ids:  # the Hub client's own rule ("a..b", "x--y", length...)
        try:
            validate_repo_id(candidate)
        except HFValidationError as error:
            raise PublishError(
                f"--repo-id {repo_id!r}: the Hub would reject the repository id "
                f"{candidate!r} ({error}); choose another --repo-id. Nothing was written."
            ) from None
    return ids


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link weights into the staging folder (no 16 GB copy); copy across devices."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_item(item: PublishItem, repo_id: str, folder: Path) -> Path:
    """Write the exact repository content of one model into ``folder`` (fresh)."""
    model_dir = Path(item.model_dir)
    if not model_dir.is_dir():
        raise PublishError(f"model folder {model_dir} of {item.name!r} does not exist")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise PublishError(f"model folder {model_dir} of {item.name!r} holds no weights")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for src in sorted(model_dir.rglob("*")):
        rel = src.relative_to(model_dir)
        if src.is_dir() or rel.as_posix() in _REPLACED or rel.parts[0].startswith("."):
            continue
        dst = folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(src, dst)
    if item.card.archive_image is not None:
        (folder / ARCHIVE_IMAGE).write_bytes(item.card.archive_image)
    if item.card.mergekit_yaml:
        (folder / MERGEKIT_CONFIG).write_text(item.card.mergekit_yaml)
    for rel, src in item.extra_files.items():
        dst = folder / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(Path(src), dst)
    (folder / "README.md").write_text(render_card(item.card, repo_id.split("/")[1]))
    return folder


def _local_files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(local: Path, sibling) -> bool:
    """Compare by content hash: LFS files by sha256, regular ones by git blob id."""
    if sibling.size is not None and sibling.size != local.stat().st_size:
        return False
    if sibling.lfs is not None:
        return _sha256(local) == sibling.lfs.sha256
    return sibling.blob_id is not None and _git_blob_sha1(local) == sibling.blob_id


class _Scrubber:
    """Removes the token from any text before it reaches a message."""

    def __init__(self, token: str | None):
        self.token = token

    def __call__(self, text: str) -> str:
        if self.token:
            text = text.replace(self.token, "***")
        return text


def _resolve_token(token: str | None) -> str:
    if token:
        return token
    from huggingface_hub import get_token

    found = get_token()
    if not found:
        raise PublishError(
            "no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write "
            "access to the target namespace), or use --dry-run to only write the folders"
        )
    return found


def _describe(exc: BaseException, scrub: _Scrubber, endpoint: str) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            return "the Hub rejected the token (401): check HF_TOKEN / `hf auth login`"
        if status == 403:
            return "the token may not write to this namespace (403)"
        return scrub(f"the Hub answered HTTP {status}: {str(exc).splitlines()[0]}")
    name = type(exc).__name__
    if "Connect" in name or "Timeout" in name or isinstance(exc, ConnectionError):
        return f"cannot reach the Hub at {endpoint} ({name}); check the network and retry"
    return scrub(f"{name}: {exc}")


def _publish_one(api, repo_id: str, folder: Path, private: bool, name: str) -> PublishedModel:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import RepositoryNotFoundError

    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    try:
        info = api.model_info(repo_id, files_metadata=True)
    except RepositoryNotFoundError as exc:
        raise PublishError(f"repository {repo_id} was created but cannot be read back") from exc
    remote = {s.rfilename: s for s in (info.siblings or []) if s.rfilename not in _HUB_OWNED}
    if remote:
        card = info.card_data.to_dict() if info.card_data is not None else {}
        tags = set(card.get("tags") or []) | set(info.tags or [])
        if CYCLEQD_TAG not in tags:
            raise PublishError(
                f"repository {repo_id} already holds {len(remote)} file(s) and no CycleQD model "
                "card; refusing to overwrite somebody else's work. Choose another --repo-id or "
                "empty that repository first."
            )
    local = _local_files(folder)
    if set(local) == set(remote) and all(_same_file(local[p], remote[p]) for p in local):
        logger.info("%s: %s already holds these exact files; skipped", name, repo_id)
        return PublishedModel(name, repo_id, folder, "unchanged")
    operations = [
        CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(f)) for p, f in local.items()
    ]
    operations += [CommitOperationDelete(path_in_repo=p) for p in sorted(set(remote) - set(local))]
    commit = api.create_commit(
        repo_id,
        operations=operations,
        commit_message=f"Publish CycleQD model {name}",
        commit_description="Uploaded with mergekit-cycleqd publish (one commit per model).",
    )
    return PublishedModel(name, repo_id, folder, "committed", commit_url=commit.commit_url)


def publish_models(
    items: Sequence[PublishItem],
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    staging_dir: Path,
) -> PublishResult:
    """Stage every model's repository folder, then (unless ``dry_run``) upload each.

    Models are published in order, each in one commit; on failure a PublishError
    names the model and says that re-running finishes the job (models already
    published are detected by content and skipped).
    """
    if not items:
        raise PublishError("nothing to publish: the selection is empty")
    repo_ids = repo_ids_for(repo_id, [item.name for item in items])
    staging_dir = Path(staging_dir)
    folders = [
        stage_item(item, rid, staging_dir / item.name)
        for item, rid in zip(items, repo_ids, strict=True)
    ]
    result = PublishResult(dry_run=dry_run)
    if dry_run:
        result.models = [
            PublishedModel(item.name, rid, folder, "dry-run")
            for item, rid, folder in zip(items, repo_ids, folders, strict=True)
        ]
        return result

    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise PublishError(
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set; unset it to publish, or use --dry-run"
        )
    secret = _resolve_token(token)
    scrub = _Scrubber(secret)
    endpoint = endpoint or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=secret)
    for item, rid, folder in zip(items, repo_ids, folders, strict=True):
        try:
            result.models.append(_publish_one(api, rid, folder, private, item.name))
        except PublishError as exc:
            raise PublishError(scrub(str(exc))) from None
        except Exception as exc:  # every failure becomes one clear, token-free message
            done = [m.name for m in result.models]
            raise PublishError(
                f"publishing {item.name!r} to {rid} failed: {_describe(exc, scrub, endpoint)}. "
                f"Nothing of it was committed. Already published: {done or 'none'}. "
                "Re-run the same command to finish (published models are skipped)."
            ) from None
    return result


def read_card(folder: Path) -> dict:
    """Front matter of a staged (or downloaded) repository folder's README.md."""
    return parse_front_matter((Path(folder) / "README.md").read_text())
