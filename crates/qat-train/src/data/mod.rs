//! Datasets: IDX (MNIST/Fashion-MNIST), CIFAR-10 binary, the shipped MNIST-10k.
