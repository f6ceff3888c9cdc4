"""Download MiniMind's real training data into dataset/ (where the stage scripts look).

    python scripts/download_data.py                       # all four stage files from HuggingFace
    python scripts/download_data.py --files sft_512.jsonl --source modelscope
    HF_ENDPOINT=https://hf-mirror.com python scripts/download_data.py   # through a mirror

Downloads resume where they stopped, show progress, and are verified against the
SHA-256 the hub publishes for each file. The revision is pinned: the first download
records the commit it resolved in dataset/MANIFEST.json and later runs reuse it, so
every stage of a run trains on the same snapshot (pass --revision to choose one).
"""
import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

HF_REPO = "jingyaogong/minimind_dataset"
MODELSCOPE_URL = "https://www.modelscope.cn/datasets/gongjy/minimind_dataset/resolve/{revision}/{name}"
STAGE_FILES = ["pretrain_hq.jsonl", "sft_512.jsonl", "sft_1024.jsonl", "r1_mix_1024.jsonl"]
OTHER_FILES = ["sft_mini_512.jsonl", "sft_2048.jsonl", "lora_identity.jsonl", "rlaif-mini.jsonl", "dpo.jsonl"]
# Checksums known independently of the hub (see the project's provenance notes): a second check.
KNOWN_SHA256 = {
    "pretrain_hq.jsonl": "9801b0d2210c61c2e4bc130f6dc4b3c870698a88d04af8f103c23dd5f0ce2440",
    "sft_mini_512.jsonl": "475039fa9b80ad365bc23d837b1a7695c7c680d950713a91359621fbb7607852",
}


class DownloadError(Exception):
    pass


def sha256_of(path: Path) -> str:
    from tqdm import tqdm
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     desc=f"verifying {path.name}", leave=False) as bar:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_metadata(names, revision):
    """(commit sha, {name: sha256}) from the hub, raising DownloadError when it cannot be reached."""
    from huggingface_hub import HfApi
    try:
        api = HfApi(endpoint=endpoint())
        commit = api.dataset_info(HF_REPO, revision=revision).sha
        infos = api.get_paths_info(HF_REPO, names, repo_type="dataset", revision=commit)
    except Exception as e:
        raise DownloadError(f"could not reach {endpoint()} to fetch {HF_REPO} ({type(e).__name__}); check the "
                            f"network, or set HF_ENDPOINT to a mirror, or use --source modelscope.") from None
    hashes = {i.path: (i.lfs.sha256 if getattr(i, "lfs", None) else None) for i in infos}
    missing = [n for n in names if n not in hashes]
    if missing:
        raise DownloadError(f"{HF_REPO} at {commit[:10]} has no file named {', '.join(missing)}.")
    return commit, hashes


def download_hf(name, commit, dest: Path) -> Path:
    from huggingface_hub import hf_hub_download
    try:  # hf_hub_download resumes partial files and shows a progress bar
        return Path(hf_hub_download(HF_REPO, name, repo_type="dataset", revision=commit, local_dir=dest,
                                    endpoint=endpoint()))
    except Exception as e:
        raise DownloadError(f"downloading {name} from {endpoint()} failed ({type(e).__name__}: {e}).") from None


def download_url(url: str, target: Path) -> Path:
    """Stream url to target, resuming a .part file with an HTTP Range request."""
    import urllib.error
    import urllib.request
    from tqdm import tqdm
    part = target.with_suffix(target.suffix + ".part")
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-"} if start else {})
    try:
        response = urllib.request.urlopen(request, timeout=30)
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"could not download {url} ({e}); check the network or try --source hf.") from None
    if start and response.status != 206:   # the server ignored Range: start over
        start = 0
    total = start + int(response.headers.get("Content-Length", 0))
    with open(part, "ab" if start else "wb") as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                        desc=target.name) as bar:
        for block in iter(lambda: response.read(1 << 20), b""):
            f.write(block)
            bar.update(len(block))
    os.replace(part, target)
    return target


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", nargs="+", default=STAGE_FILES, help=f"default: {' '.join(STAGE_FILES)}; "
                   f"also available: {' '.join(OTHER_FILES)}")
    p.add_argument("--dest", default="dataset")
    p.add_argument("--source", choices=["hf", "modelscope"], default="hf")
    p.add_argument("--revision", default=None, help="hub revision (default: the one in MANIFEST.json, else main)")
    args = p.parse_args(argv)
    dest = Path(args.dest)
    manifest_path = dest / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    revision = args.revision or manifest.get("revision") or "main"
    try:
        # Checksums always come from the hub's metadata, also when the bytes come from ModelScope.
        commit, hashes = hub_metadata(args.files, revision)
        dest.mkdir(parents=True, exist_ok=True)
        for name in args.files:
            expected = hashes.get(name) or KNOWN_SHA256.get(name)
            target = dest / name
            if target.is_file() and manifest["files"].get(name) == expected:
                print(f"{target} is already downloaded and verified.")
                continue
            if args.source == "hf":
                path = download_hf(name, commit, dest)
            else:
                path = download_url(MODELSCOPE_URL.format(revision="master", name=name), target)
            actual = sha256_of(path)
            if expected and actual != expected:
                path.rename(path.with_suffix(path.suffix + ".corrupt"))
                raise DownloadError(f"{name} has sha256 {actual[:16]}… but the hub publishes {expected[:16]}…; "
                                    f"the file was renamed to {path.name}.corrupt, run the command again.")
            if name in KNOWN_SHA256 and actual != KNOWN_SHA256[name]:
                print(f"note: {name} differs from the snapshot this project documented (the dataset was updated).")
            manifest["files"][name] = actual
            manifest["revision"] = commit
            manifest_path.write_text(json.dumps(manifest, indent=2))
            print(f"{path}: verified ({actual[:16]}…)")
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
