"""The tree's settings (``--tree``, ``--announce-radius``) as a node reads them."""

from __future__ import annotations

import pytest

from node import NodeConfig, NodeError


def test_an_announce_radius_goes_to_the_router_with_the_tree() -> None:
    config = NodeConfig(tree=True, announce_radius=2).router_config()
    assert config.tree
    assert config.announce_radius == 2
    assert NodeConfig(tree=True).router_config().announce_radius is None


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"announce_radius": 2}, r"an announce radius needs the tree \(--tree\)"),
        ({"tree": True, "announce_radius": 0}, r"announce radius 0 is not within 1\.\.48 hops"),
        (
            {"tree": True, "announce_radius": 9, "hops": 8},
            r"announce radius 9 is not within 1\.\.8 hops",
        ),
    ],
)
def test_a_bad_announce_radius_is_refused_in_words(settings: dict[str, object], words: str) -> None:
    with pytest.raises(NodeError, match=words):
        NodeConfig(**settings).router_config()  # type: ignore[arg-type]


def test_frames_may_make_more_hops_with_the_tree() -> None:
    # Greedy paths over the tree are longer than the shortest ones.
    assert NodeConfig().frame_hops == 16
    assert NodeConfig(tree=True).frame_hops == 48
    assert NodeConfig(tree=True, hops=20).frame_hops == 20
    assert NodeConfig(hops=8).frame_hops == 8
