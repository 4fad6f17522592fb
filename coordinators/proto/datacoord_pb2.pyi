from coordinators.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SegmentState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SegmentStateUnknown: _ClassVar[SegmentState]
    Growing: _ClassVar[SegmentState]
    Sealed: _ClassVar[SegmentState]
    Flushed: _ClassVar[SegmentState]
SegmentStateUnknown: SegmentState
Growing: SegmentState
Sealed: SegmentState
Flushed: SegmentState

class SegmentIDRequest(_message.Message):
    __slots__ = ("collection_id", "partition_id", "channel_name", "count")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    collection_id: int
    partition_id: int
    channel_name: str
    count: int
    def __init__(self, collection_id: _Optional[int] = ..., partition_id: _Optional[int] = ..., channel_name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class AssignSegmentIDRequest(_message.Message):
    __slots__ = ("segment_requests",)
    SEGMENT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    segment_requests: _containers.RepeatedCompositeFieldContainer[SegmentIDRequest]
    def __init__(self, segment_requests: _Optional[_Iterable[_Union[SegmentIDRequest, _Mapping]]] = ...) -> None: ...

class SegmentIDAssignment(_message.Message):
    __slots__ = ("segment_id", "collection_id", "partition_id", "channel_name", "count", "start_row")
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    START_ROW_FIELD_NUMBER: _ClassVar[int]
    segment_id: int
    collection_id: int
    partition_id: int
    channel_name: str
    count: int
    start_row: int
    def __init__(self, segment_id: _Optional[int] = ..., collection_id: _Optional[int] = ..., partition_id: _Optional[int] = ..., channel_name: _Optional[str] = ..., count: _Optional[int] = ..., start_row: _Optional[int] = ...) -> None: ...

class AssignSegmentIDResponse(_message.Message):
    __slots__ = ("assignments",)
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    assignments: _containers.RepeatedCompositeFieldContainer[SegmentIDAssignment]
    def __init__(self, assignments: _Optional[_Iterable[_Union[SegmentIDAssignment, _Mapping]]] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ("collection_id",)
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    collection_id: int
    def __init__(self, collection_id: _Optional[int] = ...) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("flushed_segment_ids", "already_flushed_segment_ids")
    FLUSHED_SEGMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_FLUSHED_SEGMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    flushed_segment_ids: _containers.RepeatedScalarFieldContainer[int]
    already_flushed_segment_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, flushed_segment_ids: _Optional[_Iterable[int]] = ..., already_flushed_segment_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class SegmentInfo(_message.Message):
    __slots__ = ("id", "collection_id", "partition_id", "channel_name", "state", "num_rows", "max_rows")
    ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    PARTITION_ID_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    id: int
    collection_id: int
    partition_id: int
    channel_name: str
    state: SegmentState
    num_rows: int
    max_rows: int
    def __init__(self, id: _Optional[int] = ..., collection_id: _Optional[int] = ..., partition_id: _Optional[int] = ..., channel_name: _Optional[str] = ..., state: _Optional[_Union[SegmentState, str]] = ..., num_rows: _Optional[int] = ..., max_rows: _Optional[int] = ...) -> None: ...

class GetSegmentInfoRequest(_message.Message):
    __slots__ = ("segment_ids",)
    SEGMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    segment_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, segment_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetSegmentInfoResponse(_message.Message):
    __slots__ = ("infos",)
    INFOS_FIELD_NUMBER: _ClassVar[int]
    infos: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    def __init__(self, infos: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ...) -> None: ...

class GetFlushStateRequest(_message.Message):
    __slots__ = ("segment_ids",)
    SEGMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    segment_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, segment_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GetFlushStateResponse(_message.Message):
    __slots__ = ("flushed",)
    FLUSHED_FIELD_NUMBER: _ClassVar[int]
    flushed: bool
    def __init__(self, flushed: _Optional[bool] = ...) -> None: ...

class ShowSegmentsRequest(_message.Message):
    __slots__ = ("collection_id",)
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    collection_id: int
    def __init__(self, collection_id: _Optional[int] = ...) -> None: ...

class ShowSegmentsResponse(_message.Message):
    __slots__ = ("infos", "unreadable")
    INFOS_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    infos: _containers.RepeatedCompositeFieldContainer[SegmentInfo]
    unreadable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, infos: _Optional[_Iterable[_Union[SegmentInfo, _Mapping]]] = ..., unreadable: _Optional[_Iterable[str]] = ...) -> None: ...
