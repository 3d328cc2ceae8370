from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testbed.kernels import dense_dot_general


@pytest.mark.parametrize("shape_in, shape_w", [((3, 5, 8), (8, 32)), ((3, 5, 32), (32, 8)), ((7, 16), (16, 16))])
def test_dense_dot_general_matches_autodiff(shape_in, shape_w):
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, shape_in)
    w = jax.random.normal(kw, shape_w)
    dn = (((x.ndim - 1,), (0,)), ((), ()))
    ref = lambda x, w: jax.lax.dot_general(x, w, dn)
    ours = lambda x, w: dense_dot_general(x, w, dn)
    np.testing.assert_allclose(ours(x, w), ref(x, w), rtol=1e-6, atol=1e-6)
    g = jax.random.normal(kg, (*shape_in[:-1], shape_w[1]))
    loss = lambda f: lambda x, w: jnp.sum(f(x, w) * g)
    for a, b in zip(jax.grad(loss(ours), (0, 1))(x, w), jax.grad(loss(ref), (0, 1))(x, w), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_other_contractions_fall_back_to_lax():
    x = jnp.ones((4, 3))
    w = jnp.ones((4, 5))
    dn = (((0,), (0,)), ((), ()))
    np.testing.assert_array_equal(dense_dot_general(x, w, dn), jax.lax.dot_general(x, w, dn))
