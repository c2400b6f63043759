"""Who is calling: optional bearer tokens, each mapped to the database role its searches run as."""

import hashlib
import json
from pathlib import Path

import yaml

from pipelines.settings import Settings, SettingsError


class Unauthorized(PermissionError):
    """A request without a valid bearer token while tokens are configured."""


class Access:
    """Without tokens every caller searches as the service role. With tokens (RAGPIPE_SERVE_TOKENS,
    a JSON object, or RAGPIPE_SERVE_TOKENS_FILE, a YAML/JSON file: {token: role}) every API call
    needs `Authorization: Bearer TOKEN` and runs as that token's role, e.g. a tenant role."""

    def __init__(self, tokens: dict[str, str], default_role: str) -> None:
        self._roles = {_digest(token): role for token, role in tokens.items()}  # no plain tokens kept
        self.default_role = default_role

    @classmethod
    def from_settings(cls, settings: Settings) -> "Access":
        tokens: dict = {}
        if settings.serve_tokens_file:
            path = Path(settings.serve_tokens_file).expanduser()
            try:
                tokens.update(yaml.safe_load(path.read_text()) or {})
            except (OSError, yaml.YAMLError, ValueError) as exc:
                raise SettingsError(f"RAGPIPE_SERVE_TOKENS_FILE: cannot read {path} as a mapping token: role "
                                    f"({type(exc).__name__})") from None
        if settings.serve_tokens:
            try:
                tokens.update(json.loads(settings.serve_tokens.get_secret_value()))
            except (ValueError, TypeError):
                raise SettingsError('RAGPIPE_SERVE_TOKENS: expected a JSON object {"token": "role"}') from None
        if not all(isinstance(t, str) and len(t) >= 16 and isinstance(r, str) and r for t, r in tokens.items()):
            raise SettingsError("serve tokens: each token must be a string of at least 16 characters mapped to a "
                                "role name")
        return cls(tokens, settings.serve_role)

    @property
    def required(self) -> bool:
        return bool(self._roles)

    def role_for(self, authorization: str | None) -> str:
        """The role a request acts as, from its Authorization header."""
        if not self.required:
            return self.default_role
        scheme, _, token = (authorization or "").partition(" ")
        role = self._roles.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if role is None:
            raise Unauthorized("a valid bearer token is required: send `Authorization: Bearer TOKEN`")
        return role

    def roles(self) -> set[str]:
        return set(self._roles.values()) | {self.default_role}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
