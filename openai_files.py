"""OpenAI's GPT-2 model folders: the seven files of a size, fetching the missing ones, checking what arrived.

A folder, `<models_dir>/<model_size>/`, counts as present only when all seven files are there under their final
names. `checkpoint` lands last, after every tensor passed its crc32c check (checkpoint.verify) and its shape
matched hparams.json, so a folder that model_is_present() accepts was checked whole; a corrupt download is
deleted, not kept. The vocab (encoder.json, vocab.bpe) is never downloaded: the repo ships it in vocab/, and it
is copied in before anything is fetched, so a folder that lacks only the vocab needs no network, and an offline
run's error names the checkpoint file it could not fetch. The downloading itself (resuming, retrying, locking)
is download.py's.

`python utils.py download` is the command line for it.
"""
import os
import shutil
from pathlib import Path

import checkpoint
from download import (ATTEMPTS, BACKOFF, TIMEOUT, CorruptDownloadError, DownloadError, download_file, file_lock)
from encoder import VOCAB_DIR, check_model_size

FILENAMES = (
    "checkpoint", "encoder.json", "hparams.json", "model.ckpt.data-00000-of-00001",
    "model.ckpt.index", "model.ckpt.meta", "vocab.bpe",
)
# Where download_gpt2_files fetches from unless told otherwise; GPT2_BASE_URL overrides it (mirrors, tests).
BASE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
VOCAB = ("encoder.json", "vocab.bpe")  # the same for every size, shipped in vocab/
LOCK_NAME = "download.lock"


def download_gpt2_files(model_size, model_dir, base_url=None, *, check=None, timeout=TIMEOUT, attempts=ATTEMPTS,
                        backoff=BACKOFF, quiet=False):
    """Fetch the files of `model_size` that model_dir lacks, check the checkpoint; return the names fetched.

    Files come from <base_url>/<model_size>/<name>: base_url, else $GPT2_BASE_URL, else OpenAI's BASE_URL.
    `checkpoint` is fetched last, after every tensor passed its crc32c check, so the folder counts as
    present only once it was checked whole (it is removed first if anything else is missing). A corrupt
    index or data file is deleted and a CorruptDownloadError says so. `check(prefix)`, if given, runs
    after the crc32c check and raises a ValueError when the tensors do not fit hparams.json (utils.py
    passes its shape check); hparams.json is then deleted, the odd one out since the index and data
    passed their checksums. encoder.json and vocab.bpe are copied from the shipped vocab/ before anything is
    fetched, and never fetched (a folder that lacks only them returns []). A second process downloading into
    the same folder waits for the first and then finds the files there (returning []). `quiet` turns off the
    progress bars and notes on stderr.
    """
    import requests

    check_model_size(model_size)
    base_url = (base_url or os.environ.get("GPT2_BASE_URL") or BASE_URL).rstrip("/")
    model_dir = Path(model_dir)
    if model_is_present(model_dir):  # asked again below, under the lock; this spares a read-only folder the lock
        return []
    model_dir.mkdir(parents=True, exist_ok=True)
    with model_lock(model_dir, quiet), requests.Session() as session:
        missing = [name for name in FILENAMES if not (model_dir / name).is_file()]
        copy_vocab(model_dir, [name for name in missing if name in VOCAB])
        missing = [name for name in missing if name not in VOCAB]
        if not missing:  # another process finished it while this one waited, or it lacked only the vocab
            return []
        (model_dir / "checkpoint").unlink(missing_ok=True)
        names = [name for name in missing if name != "checkpoint"]
        for name in [*names, "checkpoint"]:
            if name == "checkpoint":
                verify_download(model_dir, quiet, check)
            try:
                download_file(f"{base_url}/{model_size}/{name}", model_dir / name, timeout=timeout,
                              attempts=attempts, backoff=backoff, quiet=quiet, session=session)
            except CorruptDownloadError:
                raise
            except DownloadError as e:
                raise DownloadError(
                    f"{e}; if this machine is offline, run `python utils.py download --model_size {model_size}` on "
                    f"one with a network and copy the {model_size} folder it fills into {model_dir.parent}/ here, "
                    f"or point --models_dir at the folder that holds that copy"
                ) from None
    return [*names, "checkpoint"]


def copy_vocab(model_dir, names):
    """Copy these of encoder.json and vocab.bpe from the repo's vocab/ into model_dir (via .part, then renamed)."""
    for name in names:
        part = Path(model_dir) / f"{name}.part"
        shutil.copyfile(VOCAB_DIR / name, part)
        os.replace(part, Path(model_dir) / name)


def model_lock(model_dir, quiet=False):
    """Hold model_dir/download.lock while downloading into model_dir (see file_lock)."""
    return file_lock(Path(model_dir) / LOCK_NAME, f"downloading into {model_dir}", quiet)


def verify_download(model_dir, quiet=False, check=None):
    """checkpoint.verify on a fresh download, then check(prefix) if given (the shapes against hparams.json).

    If the checksums fail, the index and data file are deleted; if check fails, hparams.json is; then an error says so.
    """
    prefix = Path(model_dir) / "model.ckpt"  # the prefix OpenAI's `checkpoint` names, which lands after this
    try:
        verify_checkpoint(prefix, quiet)
    except checkpoint.CheckpointError as e:
        for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001"):
            (Path(model_dir) / name).unlink(missing_ok=True)
        problem = str(e).removesuffix(checkpoint.redownload(prefix)).rstrip(":; ")
        raise CorruptDownloadError(
            f"the checkpoint downloaded into {model_dir} is corrupt ({problem}); its index and data file were "
            f"deleted, so running the same command again downloads them afresh"
        ) from None
    if check is None:
        return
    try:
        check(prefix)
    except ValueError as e:
        (Path(model_dir) / "hparams.json").unlink(missing_ok=True)
        raise CorruptDownloadError(
            f"the checkpoint downloaded into {model_dir} does not fit its hparams.json ({e}); the tensors passed their "
            f"checksums, so hparams.json was deleted, and running the same command again downloads it afresh"
        ) from None


def verify_checkpoint(prefix, quiet=False):
    """checkpoint.verify with a progress bar over the data file's bytes; returns the number of bytes checked."""
    from tqdm import tqdm

    data = Path(checkpoint.data_path(prefix, 0, 1))
    total = data.stat().st_size if data.is_file() else None
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"checking {data.name}", disable=quiet)
    with bar:
        return checkpoint.verify(str(prefix), bar.update)


def model_is_present(model_dir):
    """True when every file is in place under its final name (a .part file never counts).

    download_gpt2_files puts `checkpoint` in place last, after checking every tensor.
    """
    return all((Path(model_dir) / name).is_file() for name in FILENAMES)
