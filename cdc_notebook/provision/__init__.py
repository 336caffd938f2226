"""Setting up capture and taking it down: table patterns (``patterns``), one validation check per
function (``checks``), the publication and slot plan (``plan``), slot creation (``slots``),
teardown (``teardown``) and slot status (``status``)."""
