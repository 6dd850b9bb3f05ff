"""Who-is-asking endpoints: access reviews, rules reviews, self review, TokenRequest; and the filter.

- `AccessFilter` (ASGI middleware) authenticates every request (`authn`), applies impersonation
  (`kubectl --as`, kube's Impersonate-* headers) and authorizes it (`rbac`) before any handler
  runs: 401 without a known token, 403 with kube's message when RBAC does not allow it. The user is
  left in the request's state (`request.state.user`) and in `rbac.CURRENT_USER`.
- `install(app, ...)` adds, before the catch-all resource routes:
  `authorization.k8s.io/v1` SubjectAccessReview, SelfSubjectAccessReview and SelfSubjectRulesReview
  (`kubectl auth can-i [--list]`), `authentication.k8s.io/v1` SelfSubjectReview
  (`kubectl auth whoami`) and `POST .../serviceaccounts/NAME/token` (`kubectl create token`).
  Reviews are answered, never stored.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cdi.apiserver import limits, protobuf
from cdi.apiserver.authn import Authenticator, impersonate
from cdi.apiserver.errors import ApiServerError, BadRequest, Invalid, MethodNotAllowed, Unauthorized, to_status
from cdi.apiserver.rbac import AUTHENTICATED, CURRENT_USER, Attributes, Authorizer, User, forbidden, request_attributes
from cdi.apiserver.routes import json_response
from cdi.apiserver.serviceaccounts import TokenIssuer, token_request

log = logging.getLogger(__name__)

Obj = dict[str, Any]
AUTHZ = "/apis/authorization.k8s.io/v1"
AUTHN = "/apis/authentication.k8s.io/v1"


class AccessFilter:
    """ASGI middleware: authentication, then RBAC authorization, in front of every route."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, authorizer: Authorizer) -> None:
        self.app = app
        self.authenticator = authenticator
        self.authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        header = next((v for k, v in headers if k == b"authorization"), b"")
        user = self.authenticator.authenticate(header)
        error: ApiServerError | None = None
        if user is None:
            error = Unauthorized("Unauthorized")
        else:
            try:
                user = impersonate(self.authorizer, user, headers)
            except ApiServerError as e:
                error = e
        if user is not None and error is None:
            method = scope.get("method", "GET") if scope["type"] == "http" else "GET"
            query = scope.get("query_string", b"").decode("latin-1")
            attrs = request_attributes(user, method, scope["path"], query)
            decision = self.authorizer.authorize(attrs)
            if not decision.allowed:
                error = forbidden(attrs, decision.reason)
                log.info("forbidden user=%s verb=%s path=%s", user.name, attrs.verb, scope["path"])
        if error is not None:
            code, body = to_status(error)
            if scope["type"] == "websocket":
                await receive()  # websocket.connect; closing before accept refuses the handshake
                await send({"type": "websocket.close", "code": 4000 + code, "reason": error.message[:120]})
                return
            await json_response(body, code)(scope, receive, send)
            return
        scope.setdefault("state", {})["user"] = user
        token = CURRENT_USER.set(user)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_USER.reset(token)


def _user_info(user: User) -> Obj:
    info: Obj = {"username": user.name}
    if user.uid:
        info["uid"] = user.uid
    info["groups"] = list(user.groups)
    if user.extra:
        info["extra"] = user.extra
    return info


def _attributes(user: User, spec: Obj, kind: str) -> Attributes:
    res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    if (res is None) == (non is None):
        raise Invalid.named(f"{kind}.authorization.k8s.io", "", [
            f"spec.resourceAttributes: Invalid value: {res}: "
            "exactly one of nonResourceAttributes or resourceAttributes must be specified"])
    if isinstance(non, dict):
        return Attributes(user, str(non.get("verb") or ""), False, path=str(non.get("path") or ""))
    if not isinstance(res, dict):
        raise BadRequest("spec.resourceAttributes must be an object")
    return Attributes(user, str(res.get("verb") or ""), True, group=str(res.get("group") or ""),
                      version=str(res.get("version") or ""), namespace=str(res.get("namespace") or ""),
                      resource=str(res.get("resource") or ""), subresource=str(res.get("subresource") or ""),
                      name=str(res.get("name") or ""))


async def _body(request: Request, kind: str) -> Obj:
    """The review in the request: JSON, or protobuf as kubectl's typed clients send it."""
    raw = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype == "application/vnd.kubernetes.protobuf":
        body: Any = protobuf.decode(raw)
    else:
        body = limits.decode(raw, "error decoding request body")
    if not isinstance(body, dict) or body.get("kind", kind) != kind:
        raise BadRequest(f"the body of the request must be a {kind}")
    return body


def _answer(body: Obj, kind: str, group: str, status: Obj) -> Response:
    return json_response({"kind": kind, "apiVersion": f"{group}/v1", "metadata": {"creationTimestamp": None},
                          "spec": body.get("spec") or {}, "status": status}, 201)


def _rules_review(authorizer: Authorizer, user: User, namespace: str) -> Obj:
    rules, errors = authorizer.rules_for(user, namespace)
    resource_rules, non_resource_rules = [], []
    for r in rules:
        if r.get("nonResourceURLs"):
            non_resource_rules.append({"verbs": r.get("verbs") or [], "nonResourceURLs": r["nonResourceURLs"]})
        else:
            rr: Obj = {"verbs": r.get("verbs") or [], "apiGroups": r.get("apiGroups") or [],
                       "resources": r.get("resources") or []}
            if r.get("resourceNames"):
                rr["resourceNames"] = r["resourceNames"]
            resource_rules.append(rr)
    status: Obj = {"resourceRules": resource_rules, "nonResourceRules": non_resource_rules, "incomplete": False}
    if errors:
        status["evaluationError"] = ", ".join(errors)
    return status


def install(app: FastAPI, authorizer: Authorizer, issuer: TokenIssuer) -> None:
    """Add the review and TokenRequest routes to an app made by `create_app` (before the catch-alls)."""

    def user_of(request: Request) -> User:
        user: User = request.state.user
        return user

    def decide(attrs: Attributes) -> Obj:
        decision = authorizer.authorize(attrs)
        status: Obj = {"allowed": decision.allowed}
        if decision.reason:
            status["reason"] = decision.reason
        return status

    @app.post(f"{AUTHZ}/selfsubjectaccessreviews")
    async def _ssar(request: Request) -> Response:
        body = await _body(request, "SelfSubjectAccessReview")
        attrs = _attributes(user_of(request), body.get("spec") or {}, "SelfSubjectAccessReview")
        return _answer(body, "SelfSubjectAccessReview", "authorization.k8s.io", decide(attrs))

    @app.post(f"{AUTHZ}/subjectaccessreviews")
    async def _sar(request: Request) -> Response:
        body = await _body(request, "SubjectAccessReview")
        spec = body.get("spec") or {}
        if not spec.get("user") and not spec.get("groups"):
            raise Invalid.named("SubjectAccessReview.authorization.k8s.io", "", [
                'spec.user: Invalid value: "": at least one of user or group must be specified'])
        groups = tuple(spec.get("groups") or ())
        subject = User(str(spec.get("user") or ""), str(spec.get("uid") or ""), groups,
                       dict(spec.get("extra") or {}))
        attrs = _attributes(subject, spec, "SubjectAccessReview")
        return _answer(body, "SubjectAccessReview", "authorization.k8s.io", decide(attrs))

    @app.post(f"{AUTHZ}/selfsubjectrulesreviews")
    async def _ssrr(request: Request) -> Response:
        body = await _body(request, "SelfSubjectRulesReview")
        namespace = str((body.get("spec") or {}).get("namespace") or "")
        status = _rules_review(authorizer, user_of(request), namespace)
        return _answer(body, "SelfSubjectRulesReview", "authorization.k8s.io", status)

    @app.post(f"{AUTHN}/selfsubjectreviews")
    async def _ssr(request: Request) -> Response:
        await _body(request, "SelfSubjectReview")  # refuses a body of another kind
        out = {"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
               "metadata": {"creationTimestamp": None}, "status": {"userInfo": _user_info(user_of(request))}}
        return json_response(out, 201)

    @app.post("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token")
    async def _token(request: Request, ns: str, name: str) -> Response:
        body = await _body(request, "TokenRequest")
        return json_response(token_request(issuer, ns, name, body), 201)

    @app.api_route(f"{AUTHZ}/{{plural}}", methods=["GET", "PUT", "PATCH", "DELETE"])
    @app.api_route(f"{AUTHN}/{{plural}}", methods=["GET", "PUT", "PATCH", "DELETE"])
    async def _not_allowed(request: Request, plural: str) -> Response:
        raise MethodNotAllowed(f"the server does not allow this method on the requested resource "
                               f"({request.method.lower()} {plural})")


__all__ = ["AUTHENTICATED", "AccessFilter", "install"]
