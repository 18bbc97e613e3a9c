"""pprof's `profile.proto` messages, built at import time.

The schema is google/pprof's `proto/profile.proto` (package
`perftools.profiles`, proto3) with its public field numbers. It is
described here as a FileDescriptorProto and turned into message classes by
protobuf's runtime, so there is no protoc step, no generated file to keep
in sync with the installed protobuf, and the wire format is exactly what
`go tool pprof` and every other pprof reader expect.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "perftools.profiles"

_F = descriptor_pb2.FieldDescriptorProto
_INT64 = _F.TYPE_INT64
_UINT64 = _F.TYPE_UINT64
_BOOL = _F.TYPE_BOOL
_STRING = _F.TYPE_STRING
_MESSAGE = _F.TYPE_MESSAGE
_ONE = _F.LABEL_OPTIONAL
_MANY = _F.LABEL_REPEATED

# (message, [(field name, number, type, label, message type name or "")]).
# String-valued fields are int64 indices into Profile.string_table.
_SCHEMA: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    (
        "Profile",
        [
            ("sample_type", 1, _MESSAGE, _MANY, "ValueType"),
            ("sample", 2, _MESSAGE, _MANY, "Sample"),
            ("mapping", 3, _MESSAGE, _MANY, "Mapping"),
            ("location", 4, _MESSAGE, _MANY, "Location"),
            ("function", 5, _MESSAGE, _MANY, "Function"),
            ("string_table", 6, _STRING, _MANY, ""),
            ("drop_frames", 7, _INT64, _ONE, ""),
            ("keep_frames", 8, _INT64, _ONE, ""),
            ("time_nanos", 9, _INT64, _ONE, ""),
            ("duration_nanos", 10, _INT64, _ONE, ""),
            ("period_type", 11, _MESSAGE, _ONE, "ValueType"),
            ("period", 12, _INT64, _ONE, ""),
            ("comment", 13, _INT64, _MANY, ""),
            ("default_sample_type", 14, _INT64, _ONE, ""),
            ("doc_url", 15, _INT64, _ONE, ""),
        ],
    ),
    ("ValueType", [("type", 1, _INT64, _ONE, ""), ("unit", 2, _INT64, _ONE, "")]),
    (
        "Sample",
        [
            ("location_id", 1, _UINT64, _MANY, ""),
            ("value", 2, _INT64, _MANY, ""),
            ("label", 3, _MESSAGE, _MANY, "Label"),
        ],
    ),
    (
        "Label",
        [
            ("key", 1, _INT64, _ONE, ""),
            ("str", 2, _INT64, _ONE, ""),
            ("num", 3, _INT64, _ONE, ""),
            ("num_unit", 4, _INT64, _ONE, ""),
        ],
    ),
    (
        "Mapping",
        [
            ("id", 1, _UINT64, _ONE, ""),
            ("memory_start", 2, _UINT64, _ONE, ""),
            ("memory_limit", 3, _UINT64, _ONE, ""),
            ("file_offset", 4, _UINT64, _ONE, ""),
            ("filename", 5, _INT64, _ONE, ""),
            ("build_id", 6, _INT64, _ONE, ""),
            ("has_functions", 7, _BOOL, _ONE, ""),
            ("has_filenames", 8, _BOOL, _ONE, ""),
            ("has_line_numbers", 9, _BOOL, _ONE, ""),
            ("has_inline_frames", 10, _BOOL, _ONE, ""),
        ],
    ),
    (
        "Location",
        [
            ("id", 1, _UINT64, _ONE, ""),
            ("mapping_id", 2, _UINT64, _ONE, ""),
            ("address", 3, _UINT64, _ONE, ""),
            ("line", 4, _MESSAGE, _MANY, "Line"),
            ("is_folded", 5, _BOOL, _ONE, ""),
        ],
    ),
    (
        "Line",
        [
            ("function_id", 1, _UINT64, _ONE, ""),
            ("line", 2, _INT64, _ONE, ""),
            ("column", 3, _INT64, _ONE, ""),
        ],
    ),
    (
        "Function",
        [
            ("id", 1, _UINT64, _ONE, ""),
            ("name", 2, _INT64, _ONE, ""),
            ("system_name", 3, _INT64, _ONE, ""),
            ("filename", 4, _INT64, _ONE, ""),
            ("start_line", 5, _INT64, _ONE, ""),
        ],
    ),
]


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="bpfprof/pprof/profile.proto", package=PACKAGE, syntax="proto3"
    )
    for msg_name, fields in _SCHEMA:
        msg = fd.message_type.add(name=msg_name)
        for name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{PACKAGE}.{type_name}"
    return fd


def _build() -> dict[str, Any]:
    """A private pool, so importing this never clashes with another copy of
    profile.proto that some other library registered in the default pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))
        for name, _ in _SCHEMA
    }


_CLASSES = _build()

# Message classes are made at runtime, so static types can only say "Any".
Profile: Any = _CLASSES["Profile"]
ValueType: Any = _CLASSES["ValueType"]
Sample: Any = _CLASSES["Sample"]
Label: Any = _CLASSES["Label"]
Mapping: Any = _CLASSES["Mapping"]
Location: Any = _CLASSES["Location"]
Line: Any = _CLASSES["Line"]
Function: Any = _CLASSES["Function"]
