from coordinators.proto import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LoadState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LoadStateNotExist: _ClassVar[LoadState]
    LoadStateNotLoad: _ClassVar[LoadState]
    LoadStateLoading: _ClassVar[LoadState]
    LoadStateLoaded: _ClassVar[LoadState]
LoadStateNotExist: LoadState
LoadStateNotLoad: LoadState
LoadStateLoading: LoadState
LoadStateLoaded: LoadState

class LoadCollectionRequest(_message.Message):
    __slots__ = ("collection_name", "replica_number")
    COLLECTION_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NUMBER_FIELD_NUMBER: _ClassVar[int]
    collection_name: str
    replica_number: int
    def __init__(self, collection_name: _Optional[str] = ..., replica_number: _Optional[int] = ...) -> None: ...

class LoadCollectionResponse(_message.Message):
    __slots__ = ("collection_id",)
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    collection_id: int
    def __init__(self, collection_id: _Optional[int] = ...) -> None: ...

class ReleaseCollectionRequest(_message.Message):
    __slots__ = ("collection_name",)
    COLLECTION_NAME_FIELD_NUMBER: _ClassVar[int]
    collection_name: str
    def __init__(self, collection_name: _Optional[str] = ...) -> None: ...

class ReleaseCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShowCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LoadedCollection(_message.Message):
    __slots__ = ("collection_id", "collection_name", "replica_number", "state", "progress", "loaded_segments", "target_segments")
    COLLECTION_ID_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICA_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOADED_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    collection_id: int
    collection_name: str
    replica_number: int
    state: LoadState
    progress: int
    loaded_segments: int
    target_segments: int
    def __init__(self, collection_id: _Optional[int] = ..., collection_name: _Optional[str] = ..., replica_number: _Optional[int] = ..., state: _Optional[_Union[LoadState, str]] = ..., progress: _Optional[int] = ..., loaded_segments: _Optional[int] = ..., target_segments: _Optional[int] = ...) -> None: ...

class ShowCollectionsResponse(_message.Message):
    __slots__ = ("collections", "unreadable")
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    UNREADABLE_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[LoadedCollection]
    unreadable: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collections: _Optional[_Iterable[_Union[LoadedCollection, _Mapping]]] = ..., unreadable: _Optional[_Iterable[str]] = ...) -> None: ...

class GetLoadStateRequest(_message.Message):
    __slots__ = ("collection_name",)
    COLLECTION_NAME_FIELD_NUMBER: _ClassVar[int]
    collection_name: str
    def __init__(self, collection_name: _Optional[str] = ...) -> None: ...

class GetLoadStateResponse(_message.Message):
    __slots__ = ("state", "progress")
    STATE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    state: LoadState
    progress: int
    def __init__(self, state: _Optional[_Union[LoadState, str]] = ..., progress: _Optional[int] = ...) -> None: ...
