"""What the REST API's tests share: a control plane of their own, calls with a credential,
LiteLLM's answer and error shapes, the audit log."""
import json

import httpx

from test_xds import Fleet


def rest_fleet(tmp_path_factory, name, setup=None):
    """A fixture's body: a fleet whose control plane is up (its REST API at `fleet.rest`),
    `setup(fleet)` run once, stopped at the end."""
    f = Fleet(tmp_path_factory.mktemp(name))
    f.start_control_plane()
    f.rest = f"http://127.0.0.1:{f.admin_port}"
    try:
        if setup:
            setup(f)
        yield f
    finally:
        f.stop()


def call(fleet, method, path, key=None, **kwargs):
    """A REST call as LiteLLM's clients make it (the master key unless `key` is given)."""
    headers = {"Authorization": f"Bearer {key or fleet.master_key}"}
    return httpx.request(method, f"{fleet.rest}{path}", headers=headers, timeout=30, **kwargs)


def ok(r):
    assert r.status_code == 200, r.text
    return r.json()


def error(r, status):
    """A refusal in LiteLLM's shape: `{"error": {"message", "type", "param", "code"}}`."""
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}, body
    assert body["code"] == str(status) and body["message"], body
    return body


def audited(fleet):
    """The audit log's (action, object id) pairs, newest first."""
    return [(e["action"], e["object_id"]) for e in json.loads(fleet.cli("audit", "--json").stdout)["entries"]]
