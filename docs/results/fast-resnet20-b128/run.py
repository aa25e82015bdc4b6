from cnnlab.data import load_dataset
from cnnlab.train import FAST, train

D = "../shared/datasets/cifar10-jpeg.tar.gz"
tr, te = load_dataset(D, "train"), load_dataset(D, "test")
r = FAST.replace(batch_size=128, lr=0.1, label_smoothing=0.0).with_epochs(30, len(tr))
print(r)
res = train("resnet20", tr, r, out="runs/fast2-resnet20", test_data=te, eval_every=1950,
            info={"data": D, "split": "full", "recipe_name": "fast (batch 128, lr 0.1, no label smoothing)"})
print("final test error", res.test_error)
