"""DICOM JSON (PS3.18 Annex F) to the Native DICOM Model XML (PS3.19 Annex A)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree as ET

from pydicom.datadict import keyword_for_tag

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def to_xml(dataset: Mapping[str, Any]) -> bytes:
    """One data set as a ``NativeDicomModel`` document (UTF-8, with XML declaration)."""
    root = ET.Element("NativeDicomModel", xmlns=NAMESPACE)
    _add_attributes(root, dataset)
    document: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return document


def _add_attributes(parent: ET.Element, dataset: Mapping[str, Any]) -> None:
    for tag in sorted(dataset):
        element = dataset[tag]
        vr = element.get("vr", "UN")
        attributes = {"tag": tag, "vr": vr}
        keyword = keyword_for_tag(int(tag, 16))
        if keyword:
            attributes["keyword"] = keyword
        node = ET.SubElement(parent, "DicomAttribute", attributes)
        if "BulkDataURI" in element:
            ET.SubElement(node, "BulkData", uri=str(element["BulkDataURI"]))
        elif "InlineBinary" in element:
            ET.SubElement(node, "InlineBinary").text = str(element["InlineBinary"])
        for number, value in enumerate(element.get("Value") or [], start=1):
            _add_value(node, vr, number, value)


def _add_value(node: ET.Element, vr: str, number: int, value: Any) -> None:
    if vr == "SQ":
        item = ET.SubElement(node, "Item", number=str(number))
        _add_attributes(item, value)
    elif vr == "PN":
        name = ET.SubElement(node, "PersonName", number=str(number))
        for group in _PN_GROUPS:
            text = value.get(group) if isinstance(value, Mapping) else None
            if text:
                group_node = ET.SubElement(name, group)
                for component, part in zip(_PN_COMPONENTS, str(text).split("^"), strict=False):
                    if part:
                        ET.SubElement(group_node, component).text = part
    else:
        ET.SubElement(node, "Value", number=str(number)).text = _text(value)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
