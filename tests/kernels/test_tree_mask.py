"""ponder.kernels.tree: ancestor masks, depths and positions, flattening, paths; KVCache.select_positions."""

import pytest
import torch

from ponder.kernels import KVCache
from ponder.kernels.tree import (
    pack_trees,
    path_index,
    path_to,
    tree_attention_bias,
    tree_depths,
    tree_mask,
    tree_positions,
    trie_from_paths,
)


def test_chain_mask_is_causal():
    parents = torch.tensor([[-1, 0, 1, 2]])
    assert torch.equal(tree_mask(parents)[0], torch.tril(torch.ones(4, 4, dtype=torch.bool)))


def test_branching_tree_sees_exactly_its_ancestors():
    # root 0 -> {1, 2}; 1 -> 3; 2 -> 4; 3 -> 5
    parents = torch.tensor([[-1, 0, 0, 1, 2, 3]])
    mask = tree_mask(parents)[0].int()
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0],
        [1, 1, 0, 1, 0, 0],
        [1, 0, 1, 0, 1, 0],
        [1, 1, 0, 1, 0, 1],
    ])
    assert torch.equal(mask, expected)
    assert tree_depths(tree_mask(parents)).tolist() == [[0, 1, 1, 2, 2, 3]]
    assert tree_positions(tree_mask(parents), torch.tensor([7])).tolist() == [[7, 8, 8, 9, 9, 10]]


def test_batched_rows_and_padding_nodes_are_independent():
    tokens, parents = pack_trees([[5, 6, 7], [9, 8]], [[-1, 0, 0], [-1, 0]], pad_token=0)
    assert tokens.tolist() == [[5, 6, 7], [9, 8, 0]]
    assert parents.tolist() == [[-1, 0, 0], [-1, 0, -1]]
    mask = tree_mask(parents)
    assert mask[1, 2].tolist() == [False, False, True]  # the pad node sees only itself
    assert tree_positions(mask, torch.tensor([3, 10])).tolist() == [[3, 4, 4], [10, 11, 10]]


@pytest.mark.parametrize("parents", [[[-1, 1]], [[-1, 0, 3, 0]], [[-1, -2]]])
def test_parent_not_before_child_is_rejected(parents):
    with pytest.raises(ValueError, match="parent must be -1"):
        tree_mask(torch.tensor(parents))


def test_attention_bias_blocks_padding_and_other_branches():
    past = torch.tensor([[0, 1, 1]])  # one left-padded position
    mask = tree_mask(torch.tensor([[-1, 0, 0]]))
    bias = tree_attention_bias(past, mask, torch.float32)  # [1, 1, 3, 6]
    allowed = (bias[0, 0] == 0).int().tolist()
    assert allowed == [[0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 1]]
    assert float(bias.min()) == torch.finfo(torch.float32).min


def test_trie_merges_shared_prefixes_and_paths_walk_back_to_the_root():
    tokens, parents = trie_from_paths(5, [[1, 2], [1, 3], [4]])
    assert tokens == [5, 1, 2, 3, 4] and parents == [-1, 0, 1, 1, 0]
    assert path_to(parents, 3) == [0, 1, 3] and path_to(parents, 0) == [0]
    assert path_index([[0, 1, 3], [0]]).tolist() == [[0, 1, 3], [0, 0, 0]]


def test_select_positions_compacts_each_rows_path():
    cache = KVCache(num_layers=2, capacity=4)
    keys = torch.arange(2 * 1 * 6 * 1, dtype=torch.float32).view(2, 1, 6, 1)  # [B=2, H, L=6, D]
    for layer in range(2):
        cache.append(layer, keys + layer, -keys)
    cache.select_positions(2, torch.tensor([[0, 2, 3], [0, 1, 1]]))  # offsets from position 2
    assert cache.length == 5
    assert cache.keys(0)[0, 0, :, 0].tolist() == [0, 1, 2, 4, 5]
    assert cache.keys(1)[1, 0, :, 0].tolist() == [7, 8, 9, 10, 10]
    assert cache.values(0)[0, 0, :, 0].tolist() == [0, -1, -2, -4, -5]
    with pytest.raises(ValueError, match="offsets must be in"):
        cache.select_positions(2, torch.tensor([[0, 9], [0, 1]]))
