"""``cdi user add|list|remove``: static users of ``cdi serve`` and their kubeconfigs.

Users live in ``DIR/users.csv``, kube-apiserver's static token file format
(``token,user,uid,"group1,group2"``), readable by its owner only; a running ``cdi serve`` reads the
file again when it changes, so a new user can log in at once and a removed one is refused at once.
``add`` writes a kubeconfig for the user with the server and CA of the admin's ``DIR/kubeconfig``
(``DIR/users/NAME.kubeconfig`` by default; ``cdi serve`` updates those on every start).
What a user may do is RBAC's business: bind them to a role, e.g.
``kubectl create rolebinding alice-admin --clusterrole=admin --user=alice -n alice``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import os
import secrets
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from cdi.apiserver.authn import StaticUser

USERS_FILE = "users.csv"


def users_file(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / USERS_FILE


def read_users(path: Path) -> list[StaticUser]:
    from cdi.apiserver.authn import parse_token_file  # the API server's modules load only when used

    return parse_token_file(path.read_text(), source=str(path)) if path.exists() else []


def write_users(path: Path, users: list[StaticUser]) -> None:
    """Replace the file atomically (owner-only), so the server never reads half of it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for u in users:
        writer.writerow([u.token, u.name, u.uid, ",".join(u.groups)])
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(out.getvalue())
    os.replace(tmp, path)


def add_user(data_dir: str | os.PathLike[str], name: str, groups: list[str]) -> StaticUser:
    """Add a user with a fresh token; ValueError if the name is taken or not usable."""
    from cdi.apiserver.authn import ADMIN_USER, StaticUser

    if not name or any(c in name for c in ",\n\r\"") or name.startswith("system:"):
        raise ValueError(f"{name!r} is not a usable user name (no commas, quotes or 'system:' prefix)")
    if name == ADMIN_USER:
        raise ValueError(f'"{name}" is the name of the admin token\'s user; choose another name')
    if any("," in g or "\n" in g or not g for g in groups):
        raise ValueError("group names must be non-empty and contain no commas")
    path = users_file(data_dir)
    users = read_users(path)
    if any(u.name == name for u in users):
        raise ValueError(f'user "{name}" already exists (remove it first to issue a new token)')
    user = StaticUser(secrets.token_urlsafe(32), name, str(uuid.uuid4()), tuple(groups))
    write_users(path, [*users, user])
    return user


def remove_user(data_dir: str | os.PathLike[str], name: str) -> None:
    path = users_file(data_dir)
    users = read_users(path)
    kept = [u for u in users if u.name != name]
    if len(kept) == len(users):
        raise ValueError(f'user "{name}" does not exist')
    write_users(path, kept)


def write_user_kubeconfig(data_dir: str | os.PathLike[str], user: StaticUser, out: Path, namespace: str) -> Path:
    from cdi.apiserver.server import write_kubeconfig  # the server's module is heavy: only when writing

    """A kubeconfig for `user` with the server URL and CA of the admin's DIR/kubeconfig."""
    admin = Path(data_dir) / "kubeconfig"
    if not admin.exists():
        raise ValueError(f"{admin} does not exist: start `cdi serve --data-dir {data_dir}` once first")
    config = yaml.safe_load(admin.read_text())
    cluster = config["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    return write_kubeconfig(out, cluster["server"], user.token, ca_pem=base64.b64decode(ca) if ca else None,
                            namespace=namespace, name=f"cdi-{user.name}")


def refresh_user_kubeconfigs(data_dir: str | os.PathLike[str]) -> list[Path]:
    """Point the kubeconfigs under DIR/users at the server and CA of the admin's DIR/kubeconfig.

    `cdi serve` calls this on every start, after writing its own kubeconfig, so users' kubeconfigs
    follow a new port (`--port 0`) as the admin's does. Kubeconfigs of removed users are left alone.
    """
    admin = yaml.safe_load((Path(data_dir) / "kubeconfig").read_text())
    cluster = admin["clusters"][0]["cluster"]
    names = {u.name for u in read_users(users_file(data_dir))}
    refreshed = []
    for path in sorted((Path(data_dir) / "users").glob("*.kubeconfig")):
        if path.name.removesuffix(".kubeconfig") not in names:
            continue
        config = yaml.safe_load(path.read_text())
        if config["clusters"][0]["cluster"] == cluster:
            continue
        config["clusters"][0]["cluster"] = cluster
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
        os.replace(tmp, path)
        refreshed.append(path)
    return refreshed


def _add(args: argparse.Namespace) -> int:
    try:
        user = add_user(args.data_dir, args.name, list(args.group))
        out = Path(args.kubeconfig_out or Path(args.data_dir) / "users" / f"{args.name}.kubeconfig")
        path = write_user_kubeconfig(args.data_dir, user, out, args.namespace)
    except ValueError as e:
        print(f"cdi user add: error: {e}", file=sys.stderr)
        return 1
    print(f'user "{user.name}" added (groups: {", ".join(user.groups) or "none"}); kubeconfig: {path}')
    print(f"grant access with RBAC, e.g.: kubectl create rolebinding {user.name}-edit --clusterrole=edit "
          f"--user={user.name} -n {args.namespace}")
    return 0


def _list(args: argparse.Namespace) -> int:
    try:
        users = read_users(users_file(args.data_dir))
    except ValueError as e:
        print(f"cdi user list: error: {e}", file=sys.stderr)
        return 1
    print(f"{'NAME':<24} {'UID':<38} GROUPS")
    for u in users:
        print(f"{u.name:<24} {u.uid:<38} {','.join(u.groups)}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    try:
        remove_user(args.data_dir, args.name)
    except ValueError as e:
        print(f"cdi user remove: error: {e}", file=sys.stderr)
        return 1
    print(f'user "{args.name}" removed; its token is refused from now on')
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("user", help="add, list or remove users of cdi serve",
                       description="Static users of cdi serve (kube's token file) and their kubeconfigs.")
    users = p.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    add = users.add_parser("add", help="add a user with a fresh token and write a kubeconfig for them")
    add.add_argument("name")
    add.add_argument("--group", action="append", default=[], help="a group of the user (repeatable)")
    add.add_argument("--namespace", default="default", help="the kubeconfig's namespace (default: default)")
    add.add_argument("--kubeconfig-out", help="where to write the kubeconfig (default DIR/users/NAME.kubeconfig)")
    add.set_defaults(func=_add)
    ls = users.add_parser("list", help="list the users")
    ls.set_defaults(func=_list)
    rm = users.add_parser("remove", help="remove a user; their token stops working")
    rm.add_argument("name")
    rm.set_defaults(func=_remove)
    for q in (add, ls, rm):
        q.add_argument("--data-dir", default="./cdi-data", help="the data directory of cdi serve")
