"""Prepares GitLab's directories on the EFS file system before the first GitLab task starts.

Invoked once by `gitlab-provision up` with the file system mounted (through a root access point)
at MOUNT_PATH. Idempotent: existing directories are left as they are.

Event: {"base": "srv/gitlab", "directories": ["data", "logs", "config"]}
Result: {"created": [...], "existing": [...]} (paths relative to the mount)
"""

import os

MOUNT_PATH = "/mnt/efs"
DEFAULT_BASE = "srv/gitlab"
DEFAULT_DIRECTORIES = ["data", "logs", "config"]


def prepare(mount_path, base, directories):
    """Creates <mount>/<base>/<dir> for each dir; reports what it created and what existed."""
    base = base.strip("/")
    if not base or ".." in base.split("/"):
        raise ValueError(f"base must be a relative path inside the file system, got {base!r}")
    created, existing = [], []
    for name in directories:
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"directory names must be single path components, got {name!r}")
        relative = f"{base}/{name}"
        path = os.path.join(mount_path, relative)
        if os.path.isdir(path):
            existing.append(relative)
            continue
        # GitLab's omnibus image runs its services as fixed UIDs and fixes ownership of its
        # own trees on boot; the top directories only need to exist, owned by root, 0755.
        os.makedirs(path, mode=0o755, exist_ok=True)
        created.append(relative)
    return {"created": created, "existing": existing}


def handler(event, _context):
    event = event or {}
    return prepare(MOUNT_PATH, event.get("base", DEFAULT_BASE), event.get("directories", DEFAULT_DIRECTORIES))
