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
