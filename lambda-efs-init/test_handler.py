import os
import tempfile
import unittest

import handler


class PrepareTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.root = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_creates_the_three_gitlab_directories(self):
        result = handler.prepare(self.root, "srv/gitlab", ["data", "logs", "config"])
        self.assertEqual(result, {"created": ["srv/gitlab/data", "srv/gitlab/logs", "srv/gitlab/config"], "existing": []})
        for name in ("data", "logs", "config"):
            self.assertTrue(os.path.isdir(os.path.join(self.root, "srv/gitlab", name)))

    def test_is_idempotent_and_keeps_existing_content(self):
        handler.prepare(self.root, "srv/gitlab", ["data", "logs", "config"])
        marker = os.path.join(self.root, "srv/gitlab/data/repositories")
        os.makedirs(marker)
        result = handler.prepare(self.root, "srv/gitlab", ["data", "logs", "config"])
        self.assertEqual(result["created"], [])
        self.assertEqual(len(result["existing"]), 3)
        self.assertTrue(os.path.isdir(marker))

    def test_creates_only_what_is_missing(self):
        os.makedirs(os.path.join(self.root, "srv/gitlab/logs"))
        result = handler.prepare(self.root, "/srv/gitlab/", ["data", "logs"])
        self.assertEqual(result, {"created": ["srv/gitlab/data"], "existing": ["srv/gitlab/logs"]})

    def test_refuses_paths_that_escape_the_mount(self):
        with self.assertRaises(ValueError):
            handler.prepare(self.root, "../etc", ["data"])
        with self.assertRaises(ValueError):
            handler.prepare(self.root, "srv/gitlab", ["../x"])
        with self.assertRaises(ValueError):
            handler.prepare(self.root, "", ["data"])

    def test_moves_a_restored_copy_into_place(self):
        restored = os.path.join(self.root, "aws-backup-restore_2026-11-28T10-00-00-000Z", "srv/gitlab/data/repositories")
        os.makedirs(restored)
        result = handler.prepare(self.root, "srv/gitlab", ["data", "logs"])
        self.assertEqual(result["restored_from"], "aws-backup-restore_2026-11-28T10-00-00-000Z")
        self.assertTrue(os.path.isdir(os.path.join(self.root, "srv/gitlab/data/repositories")))
        self.assertEqual(result["existing"], ["srv/gitlab/data"])
        self.assertEqual(result["created"], ["srv/gitlab/logs"])

    def test_leaves_restored_copies_alone_when_the_data_is_in_place_or_ambiguous(self):
        os.makedirs(os.path.join(self.root, "srv/gitlab/data"))
        os.makedirs(os.path.join(self.root, "aws-backup-restore_a/srv/gitlab/data"))
        self.assertNotIn("restored_from", handler.prepare(self.root, "srv/gitlab", ["data"]))
        other = tempfile.TemporaryDirectory()
        for name in ("aws-backup-restore_a", "aws-backup-restore_b"):
            os.makedirs(os.path.join(other.name, name, "srv/gitlab/data"))
        with self.assertRaises(ValueError):
            handler.prepare(other.name, "srv/gitlab", ["data"])
        other.cleanup()

    def test_handler_uses_the_defaults(self):
        original = handler.MOUNT_PATH
        handler.MOUNT_PATH = self.root
        try:
            result = handler.handler({}, None)
        finally:
            handler.MOUNT_PATH = original
        self.assertEqual(len(result["created"]), 3)


if __name__ == "__main__":
    unittest.main()
