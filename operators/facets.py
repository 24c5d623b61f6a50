"""reelscope's own OpenLineage facets (imported only when OpenLineage asks for lineage)."""
from __future__ import annotations

import attrs
from openlineage.client.facet_v2 import RunFacet


@attrs.define
class ModelsRunFacet(RunFacet):
    """The model each role ran (``{"asr": {"ref": ..., "revision": ...}}``), the profile, and the
    configuration's fingerprint (what the tables' ``config_fingerprint`` column holds)."""

    models: dict
    profile: str
    configFingerprint: str  # noqa: N815 (OpenLineage's naming)
