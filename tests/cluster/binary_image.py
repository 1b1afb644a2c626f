"""Images of one static binary on an empty base (the cluster's add-ons: CoreDNS, Argo's
controller, the policy enforcer), made with buildah and cached by the binary's hash under
`<cache>/dae/cluster/addon-images/`, exported as docker archives that `ctr images import`
names by themselves."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BinaryImage:
    binary: str  # its name in the binaries folder
    name: str  # the image's name, as the manifests use it
    user: str  # as upstream's image sets it
    path: str  # where the binary goes in the image
    entrypoint: bool = True  # else the Pod's args name the path, as upstream's manifests do

    def archive(self, bin_dir: Path, cache: Path) -> Path:
        source = bin_dir / self.binary
        key = hashlib.sha256(source.read_bytes() + repr(self).encode()).hexdigest()[:16]
        folder = cache / "addon-images" / f"{self.binary}-{key}"
        if not folder.is_dir():
            self._build(source, folder)
        return folder / "image.tar"

    def _build(self, source: Path, folder: Path) -> None:
        """Into a temp folder, renamed when whole."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        container = _buildah("from", "scratch")
        try:
            _buildah("copy", "--chmod", "0755", container, str(source), self.path)
            config = ["--user", self.user, "--env", "PATH=/usr/local/bin:/usr/bin:/bin"]
            if self.entrypoint:
                config += ["--entrypoint", f'["{self.path}"]']
            _buildah("config", *config, container)
            _buildah("commit", "--quiet", container, self.name)
            archive = f"docker-archive:{tmp / 'image.tar'}:{self.name}"
            _buildah("push", "--quiet", self.name, archive)
            _buildah("rmi", self.name)  # the archive is the cache; buildah's copy is not needed
        finally:
            _buildah("rm", container)
        tmp.rename(folder)


def _buildah(*args: str) -> str:
    proc = subprocess.run(["buildah", *args], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"buildah {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()
