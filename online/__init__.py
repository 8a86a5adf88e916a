"""fvmatch online: the lab's matching task in the browser (jsPsych), from the same trial lists and data contract."""
