"""Example workflows: an order saga, an approval with a timer and a signal, a fan-out with a child."""
