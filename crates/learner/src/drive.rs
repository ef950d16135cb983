//! An in-memory run of one task's stages, for tests and notebooks: the
//! harness's order of calls and its optimizers, over batches given in
//! memory, without its files, checkpoints, logs or seeding.

use tch::Tensor;

use crate::{BatchSource, ContinualMethod, Inputs, OptimConfig, Result, StageData, TaskInfo};

/// Runs `task` on `method`: `begin_task`, `prepare_task` over `data`, every stage (data stages over
/// `train`, each batch once per epoch; generated stages over the method's
/// batches), `end_stage`s and `end_task` over `data`. Returns the loss of
/// every step, in order.
pub fn run_task(
    method: &mut dyn ContinualMethod,
    task: &TaskInfo,
    optim: &OptimConfig,
    train: &[(Inputs, Tensor)],
    data: &mut dyn BatchSource,
) -> Result<Vec<f64>> {
    method.begin_task(task)?;
    method.prepare_task(task, data)?;
    let mut losses = Vec::new();
    for stage in method.stages(task, optim) {
        let mut at = task.in_stage(&stage);
        let mut opt = stage.optimizer(method.vars());
        opt.project(method.update_projections(&at))?;
        for epoch in 0..stage.epochs {
            at.epoch = epoch;
            method.begin_epoch(&at)?;
            let generated: Vec<(Inputs, Tensor)> = match stage.data {
                StageData::Generated => method.generate(&at)?.into_iter().map(|(x, y)| (Inputs::Features(x), y)).collect(),
                _ => Vec::new(),
            };
            let batches = if stage.data == StageData::Generated { &generated[..] } else { train };
            for (i, (x, y)) in batches.iter().enumerate() {
                opt.set_lr(stage.lr_at(epoch, i, batches.len()));
                let loss = method.train_step(x, y, &at)?.loss;
                opt.zero_grad();
                loss.backward();
                opt.clip_and_step();
                losses.push(loss.double_value(&[]));
            }
            method.end_epoch(&at)?;
        }
        method.end_stage(&at, data)?;
    }
    method.end_task(task, data)?;
    Ok(losses)
}

/// Batches held in memory, as a [`BatchSource`].
pub struct Held(pub Vec<(Inputs, Tensor)>);

impl BatchSource for Held {
    fn for_each(&mut self, f: &mut dyn FnMut(&Inputs, &Tensor) -> Result<()>) -> Result<()> {
        self.0.iter().try_for_each(|(x, y)| f(x, y))
    }
}
