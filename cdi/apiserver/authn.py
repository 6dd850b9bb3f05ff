"""Authentication: who a bearer token belongs to.

Three kinds of token, tried in this order:

1. the admin token of `cdi serve` (the `token` file): user `admin` in `system:masters`, kube's
   superuser group, which every authorization allows;
2. static users, in kube-apiserver's static token file format (`--token-auth-file`): one CSV line
   per user, `token,user,uid,"group1,group2"` (the groups column is optional). The file is read
   again whenever it changes, so `cdi user add` takes effect without a restart;
3. ServiceAccount tokens issued by this server (`serviceaccounts.TokenIssuer`).

Every authenticated user is also in `system:authenticated`. A request with no token, or a token
none of these knows, is answered 401 with kube's Status (anonymous requests are not enabled).
`impersonate` then applies kube's Impersonate-* headers (`kubectl --as`) when RBAC allows it.
"""

from __future__ import annotations

import csv
import hmac
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from cdi.apiserver.errors import BadRequest
from cdi.apiserver.rbac import AUTHENTICATED, MASTERS, SA_PREFIX, Attributes, Authorizer, User, forbidden
from cdi.apiserver.serviceaccounts import TokenIssuer

log = logging.getLogger(__name__)

ADMIN_USER = "admin"


@dataclass(frozen=True)
class StaticUser:
    token: str
    name: str
    uid: str
    groups: tuple[str, ...]


def parse_token_file(text: str, *, source: str = "token file") -> list[StaticUser]:
    """Parse kube's static token CSV; a malformed line is a ValueError naming its line number."""
    users = []
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 3:
            raise ValueError(f"{source}:{lineno}: expected token,user,uid[,\"group1,group2\"], got {len(row)} fields")
        token, name, uid = (c.strip() for c in row[:3])
        if not token or not name:
            raise ValueError(f"{source}:{lineno}: the token and the user name must not be empty")
        groups = tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
        users.append(StaticUser(token, name, uid, groups))
    return users


class StaticTokens:
    """The users of a static token file, reloaded when it is replaced or its time or size changes."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._stamp: tuple[int, int, int] | None = None
        self._users: list[StaticUser] = []
        self._lock = threading.Lock()

    def _reload(self) -> None:
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._users, self._stamp = [], None
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a replaced file has a new inode
        if stamp == self._stamp:
            return
        try:
            self._users = parse_token_file(self.path.read_text(), source=str(self.path))
        except ValueError as e:  # keep the users we had: a half-edited file must not lock everyone out
            log.error("static token file not reloaded: %s", e)
            return
        self._stamp = stamp
        log.info("static token file loaded path=%s users=%d", self.path, len(self._users))

    def lookup(self, token: str) -> StaticUser | None:
        with self._lock:
            self._reload()
            users = list(self._users)
        found = None
        for u in users:  # compare with every entry in constant time, so timing says nothing
            if hmac.compare_digest(u.token.encode(), token.encode()):
                found = u
        return found


class Authenticator:
    """Maps the `Authorization` header of a request to a `User`, or None (401)."""

    def __init__(self, admin_token: str, static: StaticTokens, issuer: TokenIssuer) -> None:
        self._admin = admin_token.encode()
        self.static = static
        self.issuer = issuer

    def authenticate(self, header: bytes) -> User | None:
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return None
        token = token.strip()
        if hmac.compare_digest(token, self._admin):
            return User(ADMIN_USER, "", (MASTERS, AUTHENTICATED))
        text = token.decode("utf-8", "replace")
        static = self.static.lookup(text)
        if static is not None:
            return User(static.name, static.uid, _with_authenticated(static.groups))
        if text.count(".") == 2:
            sa = self.issuer.authenticate(text)
            if sa is not None:
                return User(sa.name, sa.uid, _with_authenticated(sa.groups), sa.extra)
        return None


def impersonate(authorizer: Authorizer, user: User, headers: list[tuple[bytes, bytes]]) -> User:
    """kube's impersonation filter: `Impersonate-User/-Group/-Uid/-Extra-*` (`kubectl --as`), each
    allowed by RBAC's `impersonate` verb on users, groups, serviceaccounts, uids or userextras."""
    wanted = {k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in headers}
    name = wanted.get("impersonate-user", "")
    groups = [v.decode("utf-8", "replace") for k, v in headers if k.lower() == b"impersonate-group"]
    extra: dict[str, list[str]] = {}
    for k, v in headers:
        key = k.decode("latin-1").lower()
        if key.startswith("impersonate-extra-"):
            extra.setdefault(key[len("impersonate-extra-"):], []).append(v.decode("utf-8", "replace"))
    uid = wanted.get("impersonate-uid", "")
    if not name:
        if groups or extra or uid:
            raise BadRequest("requested impersonation of groups, extra or uid without impersonating a user")
        return user
    checks: list[Attributes] = []
    implied: list[str] = []  # a ServiceAccount's groups, not asked for and so not checked
    if name.startswith(SA_PREFIX) and name.count(":") == 3:
        ns, sa = name[len(SA_PREFIX):].split(":")
        checks.append(Attributes(user, "impersonate", True, namespace=ns, resource="serviceaccounts", name=sa))
        if not groups:
            implied = ["system:serviceaccounts", f"system:serviceaccounts:{ns}"]
    else:
        checks.append(Attributes(user, "impersonate", True, resource="users", name=name))
    checks += [Attributes(user, "impersonate", True, resource="groups", name=g) for g in groups]
    checks += [Attributes(user, "impersonate", True, group="authentication.k8s.io", resource="userextras",
                          subresource=k, name=v) for k, values in extra.items() for v in values]
    if uid:
        checks.append(Attributes(user, "impersonate", True, group="authentication.k8s.io", resource="uids", name=uid))
    for attrs in checks:
        decision = authorizer.authorize(attrs)
        if not decision.allowed:
            raise forbidden(attrs, decision.reason)
    groups = implied + groups
    if name != "system:anonymous" and not {AUTHENTICATED, "system:unauthenticated"} & set(groups):
        groups.append(AUTHENTICATED)
    log.info("impersonation user=%s as=%s", user.name, name)
    return User(name, uid, tuple(groups), extra)


def _with_authenticated(groups: tuple[str, ...]) -> tuple[str, ...]:
    return groups if AUTHENTICATED in groups else (*groups, AUTHENTICATED)
