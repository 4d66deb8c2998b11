"""The authorisation matrix over REST: LiteLLM's management endpoints × every role × an object in
the caller's own tenant and one in another's, each cell allowed or denied exactly as the gRPC
matrix (`control-plane/tests/authz_matrix.rs`) says for the RPC the endpoint maps onto. The REST
layer is a mapping onto the same services, so the two must agree; this checks that no endpoint
reads or changes what its RPC would refuse.

The world, made over REST with the master key: organizations A and B; team TA in A (admin
`ta_admin`, members `member` and `viewer`), team TB in B; users of every role in A and `user_b`
in B; one LLM key per tenant (`member`'s in TA, `user_b`'s in TB). Each actor calls with a
management key of its own user (read-only for `member_ro`); `master` with the master key."""
import pytest

from rest_support import call, ok, rest_fleet

ACTORS = ["master", "admin_user", "admin_viewer", "org_admin", "ta_admin", "member", "viewer", "member_ro"]
EVERYONE = set(ACTORS)


def allowed(endpoint, actor, own):
    """The gRPC matrix's rule for the RPC behind `endpoint` (authz_matrix.rs, `allowed`)."""
    actor = "master" if actor == "admin_user" else actor  # a proxy_admin's key is the master's
    if endpoint == "GET /audit":
        return actor in {"master", "admin_viewer"}
    if not own:
        reads = {"GET /key/info", "GET /team/info", "GET /user/info", "GET /organization/info"}
        return actor in ({"master", "admin_viewer"} if endpoint in reads else {"master"})
    return actor in {
        "GET /key/info": {"master", "admin_viewer", "org_admin", "ta_admin", "member", "member_ro"},
        "POST /key/update": {"master", "org_admin", "ta_admin", "member"},
        "POST /key/block": {"master", "org_admin", "ta_admin", "member"},
        "POST /key/generate": {"master", "org_admin", "member"},
        "GET /team/info": {"master", "admin_viewer", "org_admin", "ta_admin", "member", "viewer", "member_ro"},
        "POST /team/update": {"master", "org_admin"},
        "POST /team/member_add": {"master", "org_admin", "ta_admin"},
        "GET /user/info": {"master", "admin_viewer", "org_admin", "member", "member_ro"},
        "POST /user/update": {"master", "org_admin"},
        "GET /organization/info": EVERYONE,
        "POST /organization/update": {"master"},
    }[endpoint]


def build_world(f):
    master = lambda method, path, **kw: ok(call(f, method, path, **kw))  # noqa: E731
    for org in ["org-a", "org-b"]:
        master("POST", "/organization/new", json={"organization_id": org, "organization_alias": org})
    people = [("admin_user", "proxy_admin", None), ("admin_viewer", "proxy_admin_viewer", None),
              ("org_admin", "org_admin", "org-a"), ("ta_admin", "internal_user", "org-a"),
              ("member", "internal_user", "org-a"), ("viewer", "internal_user_viewer", "org-a"),
              ("newcomer", "internal_user", "org-a"), ("user_b", "internal_user", "org-b"),
              ("newcomer_b", "internal_user", "org-b")]
    for user, role, org in people:
        body = {"user_id": user, "user_role": role}
        if org:
            body["organization_id"] = org
        master("POST", "/user/new", json=body)
    master("POST", "/team/new", json={"team_id": "ta", "organization_id": "org-a", "members_with_roles": [
        {"user_id": "ta_admin", "role": "admin"}, {"user_id": "member", "role": "user"},
        {"user_id": "viewer", "role": "user"}]})
    master("POST", "/team/new", json={"team_id": "tb", "organization_id": "org-b",
                                      "members_with_roles": [{"user_id": "user_b", "role": "admin"}]})
    f.objects = {}
    for tenant, user, team, org, newcomer in [(True, "member", "ta", "org-a", "newcomer"),
                                              (False, "user_b", "tb", "org-b", "newcomer_b")]:
        made = master("POST", "/key/generate", json={"user_id": user, "team_id": team, "key_alias": f"key-{team}"})
        f.objects[tenant] = {"key": made["token"], "user": user, "team": team, "org": org, "newcomer": newcomer}
    f.credentials = {"master": f.master_key}
    for actor in ACTORS[1:]:
        user, key_type = ("member", "read_only") if actor == "member_ro" else (actor, "management")
        f.credentials[actor] = master("POST", "/key/generate", json={"user_id": user, "key_type": key_type})["key"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from rest_fleet(tmp_path_factory, "rest-authz", setup=build_world)


def attempt(f, endpoint, actor, own):
    o = f.objects[own]
    key = f.credentials[actor]
    method, path = endpoint.split(" ", 1)
    bodies = {
        "POST /key/update": {"key": o["key"], "tags": ["matrix"]},
        "POST /key/block": {"key": o["key"]},
        "POST /key/generate": {"user_id": o["user"], "team_id": o["team"]},
        "POST /team/update": {"team_id": o["team"], "metadata": {"matrix": actor}},
        "POST /team/member_add": {"team_id": o["team"], "member": {"user_id": o["newcomer"], "role": "user"}},
        "POST /user/update": {"user_id": o["user"], "metadata": {"matrix": actor}},
        "POST /organization/update": {"organization_id": o["org"], "metadata": {"matrix": actor}},
    }
    params = {
        "GET /key/info": {"key": o["key"]},
        "GET /team/info": {"team_id": o["team"]},
        "GET /user/info": {"user_id": o["user"]},
        "GET /organization/info": {"organization_id": o["org"]},
        "GET /audit": {},
    }
    r = call(f, method, path, key=key, json=bodies.get(endpoint), params=params.get(endpoint))
    if endpoint == "POST /key/block" and r.status_code == 200:
        ok(call(f, "POST", "/key/unblock", json={"key": o["key"]}))  # leave it usable
    if endpoint == "POST /team/member_add" and r.status_code == 200:
        ok(call(f, "POST", "/team/member_delete", json={"team_id": o["team"], "user_id": o["newcomer"]}))
    return r


ENDPOINTS = ["GET /key/info", "POST /key/update", "POST /key/block", "POST /key/generate", "GET /team/info",
             "POST /team/update", "POST /team/member_add", "GET /user/info", "POST /user/update",
             "GET /organization/info", "POST /organization/update", "GET /audit"]


def test_every_cell_of_the_rest_matrix_agrees_with_the_grpc_one(fleet):
    wrong, cells = [], 0
    for endpoint in ENDPOINTS:
        for actor in ACTORS:
            for own in (True, False):
                cells += 1
                r = attempt(fleet, endpoint, actor, own)
                expected = allowed(endpoint, actor, own)
                if expected and r.status_code != 200:
                    wrong.append(f"{endpoint} by {actor} ({'own' if own else 'other'}): {r.status_code} {r.text[:120]}")
                elif not expected and r.status_code not in (403, 404):
                    wrong.append(f"{endpoint} by {actor} ({'own' if own else 'other'}): {r.status_code}, "
                                 f"not a refusal: {r.text[:120]}")
                elif not expected and not own and endpoint.startswith("GET") and endpoint != "GET /audit" \
                        and r.status_code != 404:
                    # Another tenant's object is not there for whoever may not read it: ids
                    # cannot be probed.
                    wrong.append(f"{endpoint} by {actor} (other): {r.status_code}, not 404")
    assert cells == len(ENDPOINTS) * len(ACTORS) * 2
    assert not wrong, f"{len(wrong)} of {cells} cells wrong:\n" + "\n".join(wrong)
