"""Prepares GitLab's directories on the EFS file system before the first GitLab task starts.

Invoked once by `gitlab-provision up` with the file system mounted (through a root access point)
at MOUNT_PATH. Idempotent: existing directories are left as they are.

A file system restored by AWS Backup holds the data one level down, in a recovery directory
`aws-backup-restore_<date>/` off the root (AWS Backup never restores over the root). When the
base is missing and exactly one recovery directory holds it, it is moved into place first (a
rename within the file system: instant, whatever the size).

Event: {"base": "srv/gitlab", "directories": ["data", "logs", "config"]}
Result: {"created": [...], "existing": [...], "restored_from": "aws-backup-restore_..." | absent}
(paths relative to the mount)
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
    result = {}
    restored_from = adopt_restored(mount_path, base)
    if restored_from:
        result["restored_from"] = restored_from
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
    result.update({"created": created, "existing": existing})
    return result


RESTORE_PREFIX = "aws-backup-restore_"


def adopt_restored(mount_path, base):
    """Moves <mount>/aws-backup-restore_*/<base> to <mount>/<base> when the base is missing and
    exactly one recovery directory has it; returns that directory's name, or None."""
    target = os.path.join(mount_path, base)
    if os.path.exists(target):
        return None
    candidates = sorted(
        name
        for name in os.listdir(mount_path)
        if name.startswith(RESTORE_PREFIX) and os.path.isdir(os.path.join(mount_path, name, base))
    )
    if not candidates:
        return None
    if len(candidates) > 1:
        raise ValueError(f"several restored copies of {base} on the file system: {candidates}; keep one and run again")
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    os.rename(os.path.join(mount_path, candidates[0], base), target)
    return candidates[0]


def handler(event, _context):
    event = event or {}
    return prepare(MOUNT_PATH, event.get("base", DEFAULT_BASE), event.get("directories", DEFAULT_DIRECTORIES))
