import pytest

from la_edge.errors import (DecodeAbortedError, DecodeError, FatalDecodeError, InvalidBatchError,
                            NoKvSlotError, decode_error)


@pytest.mark.parametrize("code, cls", [(1, NoKvSlotError), (2, DecodeAbortedError), (-1, InvalidBatchError),
                                       (-3, FatalDecodeError), (7, DecodeError)])
def test_decode_codes_map_to_typed_errors_that_keep_the_code(code, cls):
    err = decode_error(code)
    assert type(err) is cls and err.code == code and str(code) in str(err)


def test_request_timeout_is_a_timeout_error():
    from la_edge import LaEdgeError, RequestTimeoutError

    assert issubclass(RequestTimeoutError, LaEdgeError) and issubclass(RequestTimeoutError, TimeoutError)
