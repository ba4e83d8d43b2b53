"""The ground floor of instseg_core: what every other part may use, and which uses nothing of ours.

- `instances`: the result type of every instance model (`Instances`), the bounding box of a mask, and the
  filtering, building and resizing of instances;
- `classes`: the one table of the object classes our models know (names, Cityscapes label ids and train ids);
- `atomic_files`: the one way files are written (temporary file in the same folder, then rename);
- `command_exit`: the one way a command ends (status 0 only when everything asked was done; one line naming what
  failed: 2 for input and OSError problems, 1 for internal errors with the traceback logged);
- `model_files`: the one way a model file is found (explicit path, environment, installed share, source tree);
- `network_input`: the RGB -> network input conversion the streaming networks share.
"""
