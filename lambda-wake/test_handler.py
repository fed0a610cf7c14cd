import os
import unittest
from unittest import mock

import handler


class FakeEcs:
    def __init__(self, desired):
        self.desired, self.updates = desired, []

    def describe_services(self, cluster, services):
        return {"services": [{"serviceName": services[0], "desiredCount": self.desired}]}

    def update_service(self, cluster, service, desiredCount):
        self.updates.append((cluster, service, desiredCount))
        self.desired = desiredCount


class FakeElb:
    def __init__(self, healthy):
        self.healthy, self.modified = healthy, []

    def describe_target_health(self, TargetGroupArn):
        state = "healthy" if self.healthy else "initial"
        return {"TargetHealthDescriptions": [{"TargetHealth": {"State": state}}] if self.healthy is not None else []}

    def modify_listener(self, ListenerArn, DefaultActions):
        self.modified.append((ListenerArn, DefaultActions[0]["TargetGroupArn"]))


class FakeScaling:
    def __init__(self, minimum=0, maximum=1):
        self.minimum, self.maximum, self.registered = minimum, maximum, []

    def describe_scalable_targets(self, ServiceNamespace, ResourceIds, ScalableDimension):
        return {"ScalableTargets": [{"MinCapacity": self.minimum, "MaxCapacity": self.maximum}]}

    def register_scalable_target(self, ServiceNamespace, ResourceId, ScalableDimension, MinCapacity, MaxCapacity):
        self.registered.append((ResourceId, MinCapacity, MaxCapacity))
        self.minimum, self.maximum = MinCapacity, MaxCapacity


ENV = {"CLUSTER": "c", "SERVICE": "gitlab", "LISTENERS": "l1,l2", "GITLAB_TARGET_GROUP": "tg-gitlab",
       "WAKE_TARGET_GROUP": "tg-wake", "SCALABLE_TARGET": "service/c/gitlab", "BOOT_MINUTES": "6"}


def request(path="/explore", agent="Mozilla/5.0"):
    return {"requestContext": {"elb": {"targetGroupArn": "tg-wake"}}, "httpMethod": "GET", "path": path,
            "headers": {"user-agent": agent}, "queryStringParameters": {}, "body": "", "isBase64Encoded": False}


class WakeTest(unittest.TestCase):
    def run_with(self, event, ecs, elb, scaling=None):
        self.scaling = scaling or FakeScaling()
        with mock.patch.dict(os.environ, ENV), mock.patch.object(handler, "clients", return_value=(ecs, elb, self.scaling)):
            return handler.handler(event, None)

    def test_a_request_while_asleep_starts_one_task_and_answers_the_waking_page(self):
        ecs, elb = FakeEcs(0), FakeElb(None)
        answer = self.run_with(request(), ecs, elb)
        self.assertEqual(ecs.updates, [("c", "gitlab", 1)])
        self.assertEqual(self.scaling.registered, [("service/c/gitlab", 1, 1)], "held at one task while it wakes")
        self.assertEqual(answer["statusCode"], 503)
        self.assertIn("GitLab is waking up", answer["body"])
        self.assertIn("about 6 minutes", answer["body"])
        self.assertIn("http-equiv=\"refresh\"", answer["body"])
        self.assertEqual(elb.modified, [], "the listener stays on the function until GitLab is healthy")
        # A second request while it boots does not ask again.
        again = self.run_with(request(), ecs, elb, self.scaling)
        self.assertEqual(len(ecs.updates), 1)
        self.assertEqual(again["headers"]["X-GitLab-Wake"], "waking")

    def test_git_gets_a_plain_503_with_the_wait(self):
        ecs, elb = FakeEcs(0), FakeElb(None)
        answer = self.run_with(request("/team/app.git/info/refs", "git/2.43.0"), ecs, elb)
        self.assertEqual(answer["statusCode"], 503)
        self.assertEqual(answer["headers"]["Retry-After"], "360")
        self.assertTrue(answer["body"].startswith("GitLab is waking up"))
        self.assertNotIn("<html", answer["body"])

    def test_once_healthy_the_listeners_go_back_to_gitlab_and_the_request_is_redirected(self):
        ecs, elb = FakeEcs(1), FakeElb(True)
        answer = self.run_with(request("/explore"), ecs, elb)
        self.assertEqual(answer["statusCode"], 307)
        self.assertEqual(answer["headers"]["Location"], "/explore")
        self.assertEqual(elb.modified, [("l1", "tg-gitlab"), ("l2", "tg-gitlab")])
        self.assertEqual(ecs.updates, [])

    def test_the_idle_alarm_points_the_listeners_at_the_function(self):
        ecs, elb = FakeEcs(1), FakeElb(True)
        alarm = {"source": "aws.cloudwatch", "alarmData": {"alarmName": "idle", "state": {"value": "ALARM"}}}
        self.assertEqual(self.run_with(alarm, ecs, elb), {"listeners": "wake", "state": "ALARM"})
        self.assertEqual(elb.modified, [("l1", "tg-wake"), ("l2", "tg-wake")])
        ok = {"alarmData": {"state": {"value": "OK"}}}
        self.assertEqual(self.run_with(ok, ecs, FakeElb(True), FakeScaling(0, 1))["listeners"], "unchanged")

    def test_outside_office_hours_nothing_starts(self):
        ecs, elb = FakeEcs(0), FakeElb(None)
        answer = self.run_with(request(), ecs, elb, FakeScaling(0, 0))
        self.assertEqual(answer["statusCode"], 503)
        self.assertIn("outside its office hours", answer["body"])
        self.assertEqual(ecs.updates, [])
        self.assertEqual(self.scaling.registered, [])

    def test_requests_again_release_the_hold_so_gitlab_may_sleep_later(self):
        ok = {"alarmData": {"state": {"value": "OK"}}}
        self.assertTrue(self.run_with(ok, FakeEcs(1), FakeElb(True), FakeScaling(1, 1))["released"])
        self.assertEqual(self.scaling.registered, [("service/c/gitlab", 0, 1)])

    def test_a_path_is_escaped_in_the_page(self):
        page = handler.waking_page(5, "/\"><script>")
        self.assertNotIn("<script>", page)

    def test_anything_else_is_refused(self):
        with self.assertRaises(ValueError):
            self.run_with({"hello": 1}, FakeEcs(0), FakeElb(None))


if __name__ == "__main__":
    unittest.main()
