"""The agent's lean Storage SCU (gateway_agent/storescu.py, issue 13 item 1) against pynetdicom's
SCP: the command set it encodes by hand is what PS3.7 says, the data set arrives byte for byte as
encoded in the file (also fragmented into small PDUs, also deflated), and every way an association
can end maps to the reason the job reports. No timing: each check waits on an answer or a
timeout it sets itself."""
from __future__ import annotations

import threading
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pynetdicom import AE, evt

from gateway_agent.dimse import CannotConnect, DimseError, Endpoint, Network, NoAcceptedContext, context_key, proposed_contexts
from gateway_agent.fetch import read_instance
from gateway_agent.part10 import dataset_offset
from gateway_agent.storescu import c_store_rq

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE, IMPLICIT_LE, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"


class Scp:
    """pynetdicom Storage SCP keeping each request's raw data set bytes and command set."""

    def __init__(self, max_pdu: int = 0, status: int = 0x0000, syntaxes=(EXPLICIT_LE, IMPLICIT_LE, DEFLATED),
                 on_store=None):
        self.received: dict[str, bytes] = {}
        self.commands: list = []
        self.status, self.on_store = status, on_store
        ae = AE(ae_title="ARCHIVE")
        ae.maximum_pdu_size = max_pdu
        for sop_class in (CT, "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.4"):
            ae.add_supported_context(sop_class, list(syntaxes))
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.ep = Endpoint("127.0.0.1", self.server.server_address[1], "ARCHIVE", "GW_SCU")

    def _store(self, event):
        if self.on_store is not None:
            self.on_store(event)
        self.commands.append(event.request)
        self.received[str(event.request.AffectedSOPInstanceUID)] = bytes(event.request.DataSet.getvalue())
        if self.status != 0x0000:
            answer = Dataset()
            answer.Status, answer.ErrorComment = self.status, "disk quota reached"
            return answer
        return 0x0000

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@pytest.fixture
def scp_factory():
    made: list[Scp] = []

    def make(**kw) -> Scp:
        made.append(Scp(**kw))
        return made[-1]
    yield make
    for s in made:
        s.stop()


def store(ep: Endpoint, path: Path, net: Network = Network(10, 5, 5)):
    inst = read_instance(path)
    key = context_key(inst, None)
    assoc = net.open_store(ep, proposed_contexts([key]))
    try:
        return inst, net.store_one(assoc, ep, inst, key[1])
    finally:
        assoc.release()


def file_dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(data):]


def test_command_set_is_ps37_c_store_rq():
    raw = c_store_rq(7, CT, "1.2.3.45")
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert (ds.AffectedSOPClassUID, ds.CommandField, ds.MessageID, ds.Priority, ds.CommandDataSetType,
            ds.AffectedSOPInstanceUID) == (CT, 0x0001, 7, 0, 0x0000, "1.2.3.45")
    assert len(raw) % 2 == 0


@pytest.mark.parametrize("name", ["CT_small.dcm", "image_dfl.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_dataset_offset_is_where_pydicom_finds_the_data_set(name):
    path = Path(get_testdata_file(name))
    full = dcmread(path)
    data = path.read_bytes()
    offset = dataset_offset(data)
    assert data[offset:offset + 2] != b"\x02\x00"  # past group 0002
    if full.file_meta.TransferSyntaxUID != DEFLATED:
        rest = read_dataset(BytesIO(data[offset:]), is_implicit_VR=full.file_meta.TransferSyntaxUID == IMPLICIT_LE,
                            is_little_endian=True)
        assert rest.SOPInstanceUID == full.SOPInstanceUID


@pytest.mark.parametrize("max_pdu", [0, 4096])
def test_data_set_arrives_as_encoded_in_the_file(scp_factory, max_pdu):
    """4096: the archive's smallest common PDU size forces the CT's pixel data into many P-DATA-TF
    fragments (PS3.8 9.3.5), reassembled by pynetdicom exactly."""
    scp = scp_factory(max_pdu=max_pdu)
    path = Path(get_testdata_file("CT_small.dcm"))
    inst, failure = store(scp.ep, path)
    assert failure is None
    assert scp.received[inst.sop_instance_uid] == file_dataset_bytes(path)
    cmd = scp.commands[0]
    assert (str(cmd.AffectedSOPClassUID), str(cmd.AffectedSOPInstanceUID)) == (CT, inst.sop_instance_uid)


def test_deflated_file_goes_deflated_and_decodes_at_the_archive(scp_factory):
    scp = scp_factory()
    path = Path(get_testdata_file("image_dfl.dcm"))
    inst, failure = store(scp.ep, path)
    assert failure is None and scp.received[inst.sop_instance_uid] == file_dataset_bytes(path)


def test_many_instances_on_one_association_keep_message_ids_in_step(scp_factory, tmp_path):
    scp = scp_factory()
    src = dcmread(get_testdata_file("CT_small.dcm"))
    net = Network(10, 5, 5)
    paths = []
    for n in range(25):
        src.SOPInstanceUID = src.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.77.{n + 1}"
        paths.append(tmp_path / f"{n}.dcm")
        src.save_as(paths[-1], enforce_file_format=True)
    insts = [read_instance(p) for p in paths]
    key = context_key(insts[0], None)
    assoc = net.open_store(scp.ep, proposed_contexts([key]))
    assert all(net.store_one(assoc, scp.ep, i, key[1]) is None for i in insts)
    assoc.release()
    assert [c.MessageID for c in scp.commands] == list(range(1, 26))
    assert set(scp.received) == {i.sop_instance_uid for i in insts}


def test_failure_status_gives_the_status_and_the_archives_comment(scp_factory):
    scp = scp_factory(status=0xA700)
    _, failure = store(scp.ep, Path(get_testdata_file("CT_small.dcm")))
    assert failure == ("C-STORE status 0xA700 (out of resources): disk quota reached", False)


def test_a_syntax_the_archive_lacks_is_converted_then_sent(scp_factory):
    scp = scp_factory(syntaxes=(IMPLICIT_LE,))  # the file is Explicit VR LE
    path = Path(get_testdata_file("CT_small.dcm"))
    inst, failure = store(scp.ep, path)
    assert failure is None
    ds = read_dataset(BytesIO(scp.received[inst.sop_instance_uid]), is_implicit_VR=True, is_little_endian=True)
    assert ds.PixelData == dcmread(path).PixelData


def test_no_accepted_context_and_no_listener_are_distinct(scp_factory):
    scp = scp_factory(syntaxes=(IMPLICIT_LE,))
    net = Network(10, 5, 5)
    with pytest.raises(NoAcceptedContext):
        net.open_store(scp.ep, [("1.2.840.10008.5.1.4.1.1.77.1.6", [EXPLICIT_LE])])  # a SOP class it lacks
    scp.stop()
    with pytest.raises(CannotConnect):
        net.open_store(scp.ep, [(CT, [EXPLICIT_LE])])


def test_wrong_called_ae_title_is_rejected_with_the_reason(scp_factory):
    scp = scp_factory()
    scp.server.ae.require_called_aet = True
    ep = Endpoint(scp.ep.host, scp.ep.port, "WRONG_AE", "GW_SCU")
    with pytest.raises(DimseError) as e:
        Network(10, 5, 5).open_store(ep, [(CT, [EXPLICIT_LE])])
    assert e.value.reason.startswith("Association rejected by WRONG_AE@127.0.0.1") and not e.value.retryable


def test_no_response_within_the_dimse_timeout_fails_the_attempt_retryably(scp_factory):
    release = threading.Event()
    scp = scp_factory(on_store=lambda event: release.wait(30))
    try:
        with pytest.raises(DimseError) as e:
            store(scp.ep, Path(get_testdata_file("CT_small.dcm")), Network(dimse_timeout=1, network_timeout=5, acse_timeout=5))
        assert "aborted during C-STORE, or no response within the DIMSE timeout" in e.value.reason and e.value.retryable
    finally:
        release.set()


def test_archive_abort_mid_association_fails_the_attempt_retryably(scp_factory):
    scp = scp_factory(on_store=lambda event: event.assoc.abort())
    with pytest.raises(DimseError) as e:
        store(scp.ep, Path(get_testdata_file("CT_small.dcm")))
    assert "aborted during C-STORE" in e.value.reason and e.value.retryable
