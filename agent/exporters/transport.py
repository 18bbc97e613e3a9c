"""OTLP transports: gRPC `ProfilesService/Export` and HTTP POST, protobuf bodies.

Both take a serialized ExportProfilesServiceRequest (the bytes the spool
keeps) and either return (with the server's partial-success message, if
any) or raise ExportFailure saying whether a retry can help. Retryable, as
the OTLP spec lists them: gRPC UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED,
ABORTED, CANCELLED, DATA_LOSS; HTTP 429, 502, 503, 504 (with Retry-After
honoured); and any connection error. Everything else (a 400, INVALID_ARGUMENT)
would fail the same way again, so the payload is dropped and counted.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

from agent.delivery import Failure
from agent.runconfig import ExportConfig

RETRYABLE_HTTP = frozenset({429, 502, 503, 504})
RETRYABLE_GRPC = frozenset(
    {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "DATA_LOSS"}
)


class Transport(Protocol):
    def send(self, payload: bytes) -> str:
        """Deliver one request; returns the partial-success message ("" if none)."""

    def close(self) -> None: ...


def partial_success(response: Any) -> str:
    ps = response.partial_success
    if ps.rejected_profiles or ps.error_message:
        return f"collector rejected {ps.rejected_profiles} profiles: {ps.error_message or '?'}"
    return ""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After is seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def auth_headers(config: ExportConfig) -> list[tuple[str, str]]:
    """Configured headers, plus `authorization: Bearer ...` from the token file,
    re-read on every send so a rotated token is picked up."""
    headers = list(config.headers)
    if config.bearer_token_file:
        try:
            token = Path(config.bearer_token_file).read_text().strip()
        except OSError as e:
            raise Failure(f"cannot read the bearer token file: {e}", True) from None
        headers.append(("authorization", f"Bearer {token}"))
    return headers


class HttpTransport:
    """POST to /v1development/profiles with `application/x-protobuf` bodies."""

    def __init__(self, config: ExportConfig) -> None:
        self.config = config
        self.url = config.url
        self._context: ssl.SSLContext | None = None
        if urllib.parse.urlsplit(self.url).scheme == "https":
            self._context = ssl.create_default_context(cafile=config.ca_file or None)
            if config.client_cert_file:
                self._context.load_cert_chain(config.client_cert_file, config.client_key_file)

    def send(self, payload: bytes) -> str:
        headers = {"Content-Type": "application/x-protobuf", "User-Agent": "bpfprof"}
        if self.config.compression == "gzip":
            payload = gzip.compress(payload, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        headers.update(auth_headers(self.config))
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(
                request, timeout=self.config.timeout, context=self._context
            ) as response:
                body = response.read()
        except urllib.error.HTTPError as e:
            retry_after = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
            raise Failure(
                f"HTTP {e.code} from {self.url}", e.code in RETRYABLE_HTTP, retry_after
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise Failure(f"cannot reach {self.url}: {reason}", True) from None
        return partial_success(svc.ExportProfilesServiceResponse.FromString(body))

    def close(self) -> None:
        pass


def grpc_target(endpoint: str, insecure: bool) -> tuple[str, bool]:
    """(host:port, use TLS): an https:// or http:// scheme decides; without
    one, TLS unless `insecure` (OTEL_EXPORTER_OTLP_INSECURE)."""
    parts = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    host = parts.hostname or "localhost"
    port = parts.port or 4317
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parts.scheme == "https":
        return target, True
    if parts.scheme == "http":
        return target, False
    return target, not insecure


class GrpcTransport:
    """ProfilesService/Export through the official generated stub."""

    def __init__(self, config: ExportConfig) -> None:
        import grpc
        from opentelemetry.proto.collector.profiles.v1development import (
            profiles_service_pb2_grpc as stubs,
        )

        self._grpc = grpc
        self.config = config
        target, tls = grpc_target(config.endpoint, config.insecure)
        # Reconnect soon after a collector restart, not after grpc's default
        # of up to two minutes of exponential reconnect backoff.
        options = [
            ("grpc.max_reconnect_backoff_ms", 5000),
            ("grpc.initial_reconnect_backoff_ms", 500),
        ]
        if tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates=_read_opt(config.ca_file),
                private_key=_read_opt(config.client_key_file),
                certificate_chain=_read_opt(config.client_cert_file),
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = stubs.ProfilesServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self.target = target

    def send(self, payload: bytes) -> str:
        grpc = self._grpc
        request = svc.ExportProfilesServiceRequest.FromString(payload)
        metadata = [(k.lower(), v) for k, v in auth_headers(self.config)]
        compression = grpc.Compression.Gzip if self.config.compression == "gzip" else None
        try:
            response = self._stub.Export(
                request, timeout=self.config.timeout, metadata=metadata, compression=compression
            )
        except grpc.RpcError as e:
            code = e.code().name if hasattr(e, "code") else "UNKNOWN"
            details = e.details() if hasattr(e, "details") else str(e)
            raise Failure(
                f"gRPC {code} from {self.target}: {details}", code in RETRYABLE_GRPC
            ) from None
        return partial_success(response)

    def close(self) -> None:
        self._channel.close()


def _read_opt(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


def make_transport(config: ExportConfig) -> Transport:
    if config.protocol == "http/protobuf":
        return HttpTransport(config)
    return GrpcTransport(config)
