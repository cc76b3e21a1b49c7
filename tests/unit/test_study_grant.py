"""The study-bucket grant's condition and setting (issue 12 item 3); the grant itself is tested on
the emulators in tests/integration/test_provisioning.py."""
from __future__ import annotations

import pytest

from shared import wiring
from shared.adapters.gcs import prefix_reader_condition
from shared.domain.errors import PermanentError
from shared.domain.provisioning import CREATE_STEPS, GatewayResources
from shared.settings import Settings


def test_the_study_condition_covers_the_groups_objects_and_listing_with_its_prefix():
    assert prefix_reader_condition("studies", "fg-1/", listing=True) == (
        'resource.name.startsWith("projects/_/buckets/studies/objects/fg-1/") || '
        '(resource.name == "projects/_/buckets/studies" && '
        'api.getAttribute("storage.googleapis.com/objectListPrefix", "").startsWith("fg-1/"))')


def test_the_objects_condition_is_unchanged():
    assert prefix_reader_condition("objects", "gateways/gw-1/") == (
        'resource.name.startsWith("projects/_/buckets/objects/objects/gateways/gw-1/")')


@pytest.mark.parametrize("prefix", ["fg-1", 'fg"1/', "fg\\1/"])
def test_a_prefix_a_condition_cannot_name_safely_is_refused(prefix):
    # Without the trailing '/', "fg-1" would also match "fg-10/"; a quote would end the CEL string.
    with pytest.raises(PermanentError):
        prefix_reader_condition("studies", prefix, listing=True)


def test_the_grant_is_a_saga_step_on_the_groups_prefix():
    assert CREATE_STEPS.index("bucket_binding") < CREATE_STEPS.index("study_binding") < CREATE_STEPS.index("record")
    assert GatewayResources("fg-1", "gw-1").study_prefix == "fg-1/"


def test_provisioning_needs_the_study_bucket_setting():
    env = {"ARCHSYNC_PROJECT_ID": "p", "ARCHSYNC_OBJECTS_BUCKET": "objects"}
    assert Settings.from_env({**env, "ARCHSYNC_STUDY_BUCKET": "studies"}).study_bucket == "studies"
    with pytest.raises(RuntimeError, match="ARCHSYNC_STUDY_BUCKET"):
        wiring.provisioner(Settings.from_env(env))
