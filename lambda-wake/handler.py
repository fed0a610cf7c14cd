"""Wakes a sleeping GitLab on its first request (gitlab-provision's `idle_sleep`).

The function runs outside the VPC and does two things, nothing else (its role allows only them):

- Invoked by the load balancer (a request while GitLab sleeps: the listener forwards to this
  function's target group), it asks GitLab's ECS service for one task, and answers with a page
  that says GitLab is waking up and refreshes itself; a Git client gets a 503 with the same
  words (it cannot show a page). Once GitLab's target is healthy, it points the listener back
  at GitLab and redirects the request there.
- Invoked by the idle alarm (CloudWatch's Lambda alarm action: GitLab went unused for the
  configured time, and Application Auto Scaling scales it to zero), it points the listener at
  this function, so the next request wakes GitLab.

While GitLab wakes, the service's scalable target is held at one task at least (so the idle
policy cannot put it back to sleep before its first requests are counted); the alarm's return
to OK lets it sleep again later. Outside office hours (the schedule holds the target at no task)
the function says so and starts nothing.

Environment: CLUSTER, SERVICE, LISTENERS (comma-separated ARNs), GITLAB_TARGET_GROUP,
WAKE_TARGET_GROUP, SCALABLE_TARGET (Application Auto Scaling's resource id), BOOT_MINUTES (how
long a wake takes, for the page).
"""

import html
import json
import os

import boto3

GIT_AGENTS = ("git/", "JGit/", "git-lfs/")
GIT_PATHS = ("/info/refs", "/git-upload-pack", "/git-receive-pack", "/info/lfs/")


NAMESPACE, DIMENSION = "ecs", "ecs:service:DesiredCount"


def clients():
    return boto3.client("ecs"), boto3.client("elbv2"), boto3.client("application-autoscaling")


def settings():
    env = os.environ
    return {
        "cluster": env["CLUSTER"],
        "service": env["SERVICE"],
        "listeners": [arn for arn in env.get("LISTENERS", "").split(",") if arn],
        "gitlab": env["GITLAB_TARGET_GROUP"],
        "wake": env["WAKE_TARGET_GROUP"],
        "target": env.get("SCALABLE_TARGET", ""),
        "minutes": int(env.get("BOOT_MINUTES", "6")),
    }


def point_listeners(elb, listeners, target_group):
    for listener in listeners:
        elb.modify_listener(ListenerArn=listener, DefaultActions=[{"Type": "forward", "TargetGroupArn": target_group}])


def gitlab_healthy(elb, target_group):
    targets = elb.describe_target_health(TargetGroupArn=target_group).get("TargetHealthDescriptions", [])
    return any(t.get("TargetHealth", {}).get("State") == "healthy" for t in targets)


def bounds(scaling, target):
    found = scaling.describe_scalable_targets(ServiceNamespace=NAMESPACE, ResourceIds=[target], ScalableDimension=DIMENSION)
    found = found.get("ScalableTargets", [])
    return (found[0]["MinCapacity"], found[0]["MaxCapacity"]) if found else (0, 1)


def set_min(scaling, target, minimum, maximum):
    scaling.register_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=target, ScalableDimension=DIMENSION,
                                     MinCapacity=minimum, MaxCapacity=maximum)


def wake(ecs, scaling, s):
    """One task, held until requests are counted: idempotent (a service already asked for one
    is left as it is)."""
    minimum, maximum = bounds(scaling, s["target"])
    if minimum < 1:
        set_min(scaling, s["target"], 1, max(maximum, 1))
    current = ecs.describe_services(cluster=s["cluster"], services=[s["service"]])["services"]
    if current and current[0].get("desiredCount", 0) >= 1:
        return False
    ecs.update_service(cluster=s["cluster"], service=s["service"], desiredCount=1)
    return True


def is_git(event):
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    agent = headers.get("user-agent", "")
    path = event.get("path", "")
    return agent.startswith(GIT_AGENTS) or any(p in path for p in GIT_PATHS)


def waking_page(minutes, path):
    safe = html.escape(path or "/", quote=True)
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"refresh\" content=\"20;url={safe}\"><title>GitLab is waking up</title></head>"
        "<body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">"
        f"<h1>GitLab is waking up</h1><p>It was asleep to save money. It will be ready in about {minutes} minutes; "
        "this page reloads itself until then.</p></body></html>"
    )


def plain(status, text, retry):
    return {"statusCode": status, "statusDescription": f"{status} Service Unavailable", "isBase64Encoded": False,
            "headers": {"Content-Type": "text/plain; charset=utf-8", "Retry-After": str(retry)}, "body": text + "\n"}


def on_request(event, ecs, elb, scaling, s):
    path = event.get("path") or "/"
    if gitlab_healthy(elb, s["gitlab"]):
        # Awake: GitLab takes the listener back, and this request goes there.
        point_listeners(elb, s["listeners"], s["gitlab"])
        query = event.get("queryStringParameters") or {}
        location = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
        return {"statusCode": 307, "statusDescription": "307 Temporary Redirect", "isBase64Encoded": False,
                "headers": {"Location": location, "Cache-Control": "no-store"}, "body": ""}
    if bounds(scaling, s["target"])[1] == 0:
        # The schedule (or `sleep`) holds GitLab at no task: not a request's to overrule.
        return plain(503, "GitLab is off outside its office hours (or put to sleep by an admin).", 3600)
    started = wake(ecs, scaling, s)
    message = f"GitLab is waking up: ready in about {s['minutes']} minutes. Retry then."
    if is_git(event):
        return plain(503, message, s["minutes"] * 60)
    return {"statusCode": 503, "statusDescription": "503 Service Unavailable", "isBase64Encoded": False,
            "headers": {"Content-Type": "text/html; charset=utf-8", "Retry-After": "20", "Cache-Control": "no-store",
                        "X-GitLab-Wake": "started" if started else "waking"},
            "body": waking_page(s["minutes"], path)}


def on_alarm(event, elb, scaling, s):
    """ALARM: idle, Application Auto Scaling puts GitLab to sleep; requests come here from now
    on. OK: requests again; the hold of a wake is released, so GitLab may sleep again later."""
    state = ((event.get("alarmData") or {}).get("state") or {}).get("value")
    if state == "ALARM":
        point_listeners(elb, s["listeners"], s["wake"])
        return {"listeners": "wake", "state": state}
    if state == "OK":
        minimum, maximum = bounds(scaling, s["target"])
        if minimum > 0 and maximum > 0:
            set_min(scaling, s["target"], 0, maximum)
        return {"listeners": "unchanged", "state": state, "released": minimum > 0}
    return {"listeners": "unchanged", "state": state}


def handler(event, context):
    s = settings()
    ecs, elb, scaling = clients()
    if "alarmData" in event:
        return on_alarm(event, elb, scaling, s)
    if "requestContext" in event and "elb" in event["requestContext"]:
        return on_request(event, ecs, elb, scaling, s)
    raise ValueError(f"not a load balancer request or an alarm: {json.dumps(event)[:200]}")
