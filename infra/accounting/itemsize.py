"""DynamoDB item sizes and the capacity units a request consumes, by the published rules.

Sources (Amazon DynamoDB Developer Guide):

- *DynamoDB item sizes and formats* (CapacityUnitCalculations.html): an item's size is the
  sum of its attribute names' and values' sizes. A string is its UTF-8 bytes; a number is
  about 1 byte per two significant digits plus 1 byte (leading and trailing zeroes
  trimmed); a binary value is its raw bytes; null and Boolean are 1 byte; a List or Map
  costs 3 bytes plus its elements, plus 1 byte per element. For storage billing every item
  carries 100 bytes of indexing overhead. The page does not give a per-element overhead
  for sets: a set here is the sum of its elements.
- *Read/write capacity units* (same page; read-write-operations.html): a write consumes 1
  unit per 1 KB (1,024 bytes) of item, rounded up; a PutItem or UpdateItem is sized on the
  larger of the item before and after, a DeleteItem on the deleted item; a BatchWriteItem
  rounds each item separately. A strongly consistent read consumes 1 unit per 4 KB, an
  eventually consistent read half of that; a read of a missing item still costs 1 (or
  0.5). GetItem and BatchGetItem round each item up to 4 KB; Query and Scan round the total
  of the items read once.
- *Transactions, capacity management* (transaction-apis.html): DynamoDB performs two
  underlying writes (or reads) per item in a transaction, prepare and commit: 2 units per
  1 KB written, 2 per 4 KB read.
- *Global secondary indexes* (GSI.html, "Write capacity units" and "Storage considerations"):
  an index entry is the table's primary key, the index key and the projected attributes;
  its storage adds 100 bytes per entry; writing it costs 1 unit per 1 KB of the entry.

On-demand tables bill the same arithmetic in request units (WRU, RRU).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from typing import Any

WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
STORAGE_OVERHEAD_BYTES = 100  # per item, and per index entry
CONTAINER_OVERHEAD_BYTES = 3  # a List or a Map
ELEMENT_OVERHEAD_BYTES = 1  # each element of a List or a Map

AttributeValue = Mapping[str, Any]  # the service's typed form: {"S": "..."}, {"N": "12"}, ...
Item = Mapping[str, AttributeValue]


def number_size(text: str) -> int:
    """Bytes of a DynamoDB number: one per two significant digits, plus one."""
    mantissa = text.strip().lstrip("+-").lower().split("e", 1)[0]
    digits = mantissa.replace(".", "").strip("0")
    return math.ceil(len(digits) / 2) + 1


def binary_size(value: bytes | bytearray | memoryview | str) -> int:
    """Raw bytes of a binary value; a ``str`` is taken as its base64 text (the wire form)."""
    if isinstance(value, str):
        return len(base64.b64decode(value))
    return len(value)


def value_size(value: AttributeValue) -> int:
    """The size of one typed attribute value, without its name."""
    ((kind, content),) = value.items()
    if kind == "S":
        return len(str(content).encode())
    if kind == "N":
        return number_size(str(content))
    if kind == "B":
        return binary_size(content)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode()) for s in content)
    if kind == "NS":
        return sum(number_size(str(n)) for n in content)
    if kind == "BS":
        return sum(binary_size(b) for b in content)
    if kind == "L":
        return CONTAINER_OVERHEAD_BYTES + sum(value_size(v) + ELEMENT_OVERHEAD_BYTES for v in content)
    if kind == "M":
        return CONTAINER_OVERHEAD_BYTES + sum(
            attribute_size(k, v) + ELEMENT_OVERHEAD_BYTES for k, v in content.items()
        )
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def attribute_size(name: str, value: AttributeValue) -> int:
    """The size of one attribute: its name's UTF-8 bytes plus its value."""
    return len(name.encode()) + value_size(value)


def item_size(item: Item, names: Iterable[str] | None = None) -> int:
    """The size of an item (or of the named attributes of it), as capacity is computed."""
    chosen = item if names is None else {n: item[n] for n in names if n in item}
    return sum(attribute_size(n, v) for n, v in chosen.items())


def write_units(size: int, *, transactional: bool = False) -> int:
    """Write units for one item write of ``size`` bytes (at least one)."""
    units = max(1, math.ceil(size / WRITE_UNIT_BYTES))
    return 2 * units if transactional else units


def read_units(size: int, *, consistent: bool, transactional: bool = False) -> float:
    """Read units for reading ``size`` bytes as one unit (a GetItem, or a Query's total)."""
    units = max(1, math.ceil(size / READ_UNIT_BYTES))
    if transactional:
        return 2.0 * units
    return float(units) if consistent else units / 2


def batch_read_units(sizes: Iterable[int], *, consistent: bool) -> float:
    """BatchGetItem: each item rounded up to 4 KB on its own (a missing item costs one read)."""
    return sum(read_units(size, consistent=consistent) for size in sizes)


def query_read_units(sizes: Iterable[int], *, consistent: bool) -> float:
    """Query or Scan: the total of the items read, rounded up once."""
    return read_units(sum(sizes), consistent=consistent)


def stored_bytes(size: int) -> int:
    """Billed storage of one item or index entry of ``size`` bytes."""
    return size + STORAGE_OVERHEAD_BYTES
