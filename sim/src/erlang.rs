//! Exact analytic Erlang B, C and A figures, computed beside the simulator's results so that
//! a run can be checked against queueing theory wherever the theory's assumptions hold.

/// Tail mass (relative to the modal state, whose weight is 1) below which the Erlang A chain
/// is cut off: far below anything a figure rounded for humans or compared with a simulation
/// could notice.
const TAIL_EPS: f64 = 1e-17;

/// Hard bound on the number of queue states of the Erlang A chain. A model that needs more is
/// so overloaded that the figures are meaningless, and the memory and time would be wasted.
const MAX_QUEUE_STATES: usize = 1_000_000;

/// Largest uniformization rate times step length. `exp(-200)` is still a normal f64, so the
/// Poisson weights of one step never underflow, while steps stay long enough that the extra
/// Poisson terms paid per step are a modest overhead.
const MAX_STEP_RATE: f64 = 200.0;

/// Error allowed in a service level for each of its two truncations: queue positions
/// dropped as unreachable within T, and the Poisson tail of each uniformization step.
const UNIFORMIZATION_EPS: f64 = 1e-13;

/// Waiting mass below which the tagged caller's chain is considered drained, so long
/// thresholds do not pay for steps that cannot change the answer.
const DRAINED_EPS: f64 = 1e-16;

/// Patience horizons after which a caller's chance of still waiting, at most
/// exp(-theta * t), is negligible: exp(-40) is about 4e-18.
const PATIENCE_HORIZONS: f64 = 40.0;

/// Safety cap on the Poisson terms of one uniformization step; with a step mean of at most
/// `MAX_STEP_RATE` the tail bound is met after a few hundred terms.
const MAX_POISSON_TERMS: usize = 10_000;

/// Agent counts searched by `agents_for_service_level` stay below one million.
const MAX_AGENTS: u32 = 999_999;

/// Blocking probability of an M/M/n/n loss system (Erlang B) with `servers` servers and
/// `offered_erlangs` of offered traffic.
///
/// Returns NaN when the offered load is negative or not finite.
pub fn erlang_b(servers: u32, offered_erlangs: f64) -> f64 {
    if !offered_erlangs.is_finite() || offered_erlangs < 0.0 {
        return f64::NAN;
    }
    // The recurrence only ever divides by numbers >= 1 and keeps B in [0, 1], so unlike
    // A^n/n! over a sum it neither overflows nor loses precision for huge pools.
    let mut blocking = 1.0;
    for k in 1..=servers {
        let carried = offered_erlangs * blocking;
        blocking = carried / (f64::from(k) + carried);
    }
    blocking
}

/// Smallest number of servers whose Erlang B blocking is <= `blocking_target`.
///
/// Returns `Some(0)` for a target of 1 or more (zero servers block everything), and None when
/// the target is not positive or either input is not finite.
pub fn erlang_b_servers_for(offered_erlangs: f64, blocking_target: f64) -> Option<u32> {
    if !blocking_target.is_finite()
        || blocking_target <= 0.0
        || !offered_erlangs.is_finite()
        || offered_erlangs < 0.0
    {
        return None;
    }
    // Walking the recurrence upward visits every pool size once, so the first size under the
    // target is found in the same O(n) as evaluating the answer itself.
    let mut blocking = 1.0;
    let mut servers = 0u32;
    while blocking > blocking_target {
        servers = servers.checked_add(1)?;
        let carried = offered_erlangs * blocking;
        blocking = carried / (f64::from(servers) + carried);
    }
    Some(servers)
}

/// Inputs of one queue (ACD) with `agents` identical agents, Poisson arrivals, exponential
/// handle time, optional exponential caller patience (absent = callers never abandon).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueModel {
    pub arrival_per_s: f64,
    pub handle_s_mean: f64,
    pub agents: u32,
    /// Mean patience; None = infinite patience (Erlang C), Some = Erlang A (M/M/n+M, Palm).
    pub patience_s_mean: Option<f64>,
    /// Service-level threshold T: "answered within T seconds".
    pub service_level_s: f64,
}

/// The analytic figures of a queue. Definitions (the simulator measures exactly these):
/// - p_wait: probability an arriving caller finds all agents busy (waits > 0).
/// - asa_s: mean wait of ANSWERED callers (callers answered at once count with wait 0).
/// - service_level: fraction of ALL arriving callers that are answered with wait <= T.
/// - abandoned_fraction: fraction of all arriving callers that abandon (0 for Erlang C).
/// - mean_wait_s: mean wait over all arriving callers (abandoners counted up to the time they
///   left).
/// - occupancy: mean fraction of agents busy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueFigures {
    pub p_wait: f64,
    pub asa_s: f64,
    pub service_level: f64,
    pub abandoned_fraction: f64,
    pub mean_wait_s: f64,
    pub occupancy: f64,
}

/// Erlang C (patience None) or Erlang A (patience Some).
///
/// Returns None when the model has no steady state (Erlang C with offered load >= agents),
/// when inputs are not positive/finite (a service-level threshold of 0 is allowed), when
/// `agents == 0`, or when an Erlang A queue would be too long to tabulate (an overload so
/// deep that it has no practical meaning).
pub fn queue_figures(model: &QueueModel) -> Option<QueueFigures> {
    if model.agents == 0 || !inputs_valid(model) {
        return None;
    }
    let figures = match model.patience_s_mean {
        None => erlang_c(model)?,
        Some(patience) => erlang_a(model, 1.0 / patience)?,
    };
    let all_finite = [
        figures.p_wait,
        figures.asa_s,
        figures.service_level,
        figures.abandoned_fraction,
        figures.mean_wait_s,
        figures.occupancy,
    ]
    .iter()
    .all(|x| x.is_finite());
    all_finite.then_some(figures)
}

/// Smallest agent count meeting a service level target (fraction answered within T) for the
/// model (its `agents` field is ignored). None if not reachable below 1_000_000 agents, if the
/// target is outside (0, 1) (a service level of exactly 1 is never reached, so only rounding
/// could "meet" it), or if the model's inputs are invalid.
pub fn agents_for_service_level(model: &QueueModel, target: f64) -> Option<u32> {
    if !inputs_valid(model) || target.is_nan() || target <= 0.0 || target >= 1.0 {
        return None;
    }
    // A count whose figures cannot be computed is an unstable or absurdly overloaded queue,
    // which certainly misses any service level worth asking for.
    let meets = |agents: u32| {
        queue_figures(&QueueModel { agents, ..*model })
            .is_some_and(|figures| figures.service_level >= target)
    };
    // Start from a count known to fail, so the search never evaluates deep overloads (the
    // costliest models to tabulate). Erlang C has no steady state up to the offered load.
    // With abandonment, answered-within-T <= answered = carried / offered <= n / offered,
    // so fewer than target * offered agents cannot do.
    let offered = model.arrival_per_s * model.handle_s_mean;
    let known_failing = match model.patience_s_mean {
        None => offered.floor(),
        Some(_) => ((target * offered).ceil() - 1.0).max(0.0),
    };
    if known_failing >= f64::from(MAX_AGENTS) {
        return None;
    }
    let mut failing = known_failing as u32;
    // Gallop upward so the cost stays logarithmic in the answer, then bisect. Service level
    // grows with the agent count, which is what makes bisection valid.
    let mut step = 1u32;
    let mut passing = loop {
        let candidate = failing.saturating_add(step).min(MAX_AGENTS);
        if meets(candidate) {
            break candidate;
        }
        if candidate >= MAX_AGENTS {
            return None;
        }
        failing = candidate;
        step = step.saturating_mul(2);
    };
    while passing - failing > 1 {
        let middle = failing + (passing - failing) / 2;
        if meets(middle) {
            passing = middle;
        } else {
            failing = middle;
        }
    }
    Some(passing)
}

/// Checks everything of the model except the agent count, which the sizing search varies.
fn inputs_valid(model: &QueueModel) -> bool {
    let positive = |x: f64| x.is_finite() && x > 0.0;
    positive(model.arrival_per_s)
        && positive(model.handle_s_mean)
        && model.service_level_s.is_finite()
        && model.service_level_s >= 0.0
        && model.patience_s_mean.is_none_or(positive)
}

fn erlang_c(model: &QueueModel) -> Option<QueueFigures> {
    let agents = f64::from(model.agents);
    let offered = model.arrival_per_s * model.handle_s_mean;
    if offered >= agents {
        return None;
    }
    let blocking = erlang_b(model.agents, offered);
    // Going through Erlang B keeps the huge factorial terms out of the computation.
    let p_wait = agents * blocking / (agents - offered * (1.0 - blocking));
    // Written as (n - A) * mu rather than n*mu - lambda so a load close to the agent count
    // does not cancel two nearly equal rates.
    let drain_rate = (agents - offered) / model.handle_s_mean;
    let asa_s = p_wait / drain_rate;
    Some(QueueFigures {
        p_wait,
        asa_s,
        service_level: 1.0 - p_wait * (-drain_rate * model.service_level_s).exp(),
        abandoned_fraction: 0.0,
        mean_wait_s: asa_s,
        occupancy: offered / agents,
    })
}

fn erlang_a(model: &QueueModel, abandon_rate: f64) -> Option<QueueFigures> {
    let arrival = model.arrival_per_s;
    let service_rate = 1.0 / model.handle_s_mean;
    let agents = model.agents as usize;
    let agents_f = f64::from(model.agents);
    let all_busy_rate = agents_f * service_rate;

    let weights = stationary_weights(model, abandon_rate)?;
    let total: f64 = weights.iter().sum();
    let (below, queue) = weights.split_at_checked(agents)?;
    let p_below = below.iter().sum::<f64>() / total;
    let busy_below = below
        .iter()
        .enumerate()
        .map(|(k, w)| k as f64 * w)
        .sum::<f64>()
        / total;

    let mut p_wait = 0.0;
    let mut mean_queue = 0.0;
    let mut answered_after_wait = 0.0;
    let mut abandoned = 0.0;
    let mut answered_wait_sum = 0.0;
    // Log of P(answered | j ahead): summing log1p keeps both it and its complement (the
    // abandonment probability) accurate, even when patience is so long that abandonment
    // is a tiny difference from 1.
    let mut log_answered = 0.0;
    let mut mean_stage_sum = 0.0;
    for (ahead, weight) in queue.iter().enumerate() {
        let pi = weight / total;
        let ahead_f = ahead as f64;
        let stage_rate = all_busy_rate + ahead_f * abandon_rate;
        let stage_exit = stage_rate + abandon_rate;
        log_answered += (-abandon_rate / stage_exit).ln_1p();
        mean_stage_sum += 1.0 / stage_exit;
        let p_answered = log_answered.exp();
        p_wait += pi;
        mean_queue += ahead_f * pi;
        answered_after_wait += pi * p_answered;
        abandoned += pi * -log_answered.exp_m1();
        answered_wait_sum += pi * p_answered * mean_stage_sum;
    }
    let p_answered = p_below + answered_after_wait;

    let answered_within_t = if p_wait > 0.0 {
        let start: Vec<f64> = queue.iter().map(|w| w / total / p_wait).collect();
        p_wait * answered_within(&start, all_busy_rate, abandon_rate, model.service_level_s)?
    } else {
        0.0
    };

    Some(QueueFigures {
        p_wait,
        asa_s: answered_wait_sum / p_answered,
        // Being answered within T implies being answered; the clamp only removes rounding
        // noise, which matters to a sizing search comparing against a target.
        service_level: (p_below + answered_within_t).min(p_answered),
        abandoned_fraction: abandoned,
        mean_wait_s: mean_queue / arrival,
        occupancy: (busy_below + agents_f * p_wait) / agents_f,
    })
}

/// Unnormalised stationary weights of the M/M/n+M birth-death chain over the number in the
/// system, scaled so the modal state has weight 1.
///
/// Anchoring at the mode means every weight is a product of ratios <= 1, so nothing
/// overflows however lopsided the load, and states far from the mode just underflow to 0.
fn stationary_weights(model: &QueueModel, abandon_rate: f64) -> Option<Vec<f64>> {
    let arrival = model.arrival_per_s;
    let service_rate = 1.0 / model.handle_s_mean;
    let agents = model.agents as usize;
    let agents_f = f64::from(model.agents);
    let offered = arrival * model.handle_s_mean;
    let death = |k: usize| {
        if k <= agents {
            k as f64 * service_rate
        } else {
            agents_f * service_rate + (k - agents) as f64 * abandon_rate
        }
    };

    // The up/down ratio arrival/death(k+1) falls with k, so the mode is where it drops
    // below 1: at the offered load if the agents can carry it, else where abandonment
    // balances the excess.
    let mode = if offered < agents_f {
        offered.floor() as usize
    } else {
        let excess_queue = ((offered - agents_f) * service_rate / abandon_rate).floor();
        if excess_queue > MAX_QUEUE_STATES as f64 {
            return None;
        }
        agents + excess_queue as usize
    };

    let mut weights = Vec::with_capacity(mode + 1);
    let mut weight = 1.0;
    weights.push(weight);
    for k in (1..=mode).rev() {
        weight *= death(k) / arrival;
        weights.push(weight);
    }
    weights.reverse();

    let mut k = mode;
    weight = 1.0;
    loop {
        let ratio = arrival / death(k + 1);
        // The ratios keep falling, so the rest of the tail is bounded by a geometric series
        // with the current ratio; the chain is not cut below the all-busy state because the
        // queue slice must exist.
        if k >= agents && ratio < 1.0 && weight * ratio / (1.0 - ratio) < TAIL_EPS {
            break;
        }
        if k >= agents + MAX_QUEUE_STATES {
            return None;
        }
        weight *= ratio;
        weights.push(weight);
        k += 1;
    }
    Some(weights)
}

/// Probability that a waiting caller is answered within `threshold_s`, for a caller whose
/// number of callers ahead is distributed as `start` (a probability vector indexed by the
/// count ahead).
///
/// The tagged caller moves from j ahead to j-1 at rate r_j = n*mu + j*theta (a service
/// completion or an abandonment ahead), from 0 ahead to answered at rate r_0, and abandons at
/// rate theta from every waiting state. Uniformization gives its transient distribution
/// exactly, up to a Poisson truncation error bounded explicitly.
///
/// None only when the rate-time product overflows.
fn answered_within(
    start: &[f64],
    all_busy_rate: f64,
    abandon_rate: f64,
    threshold_s: f64,
) -> Option<f64> {
    // A waiting caller abandons at rate theta whatever its position, so past this horizon
    // too little mass is still waiting to change the answer; capping bounds the work for
    // any threshold.
    let horizon = threshold_s.min(PATIENCE_HORIZONS / abandon_rate);
    if horizon <= 0.0 {
        return Some(0.0);
    }
    // The uniformization rate, hence the cost, grows with the deepest queue position kept,
    // so positions that provably cannot reach an agent in time are dropped first.
    let start = reachable_prefix(start, all_busy_rate, abandon_rate, horizon);
    if start.is_empty() {
        return Some(0.0);
    }
    let top = start.len() - 1;
    let uniform_rate = all_busy_rate + (top + 1) as f64 * abandon_rate;
    let total_rate_time = uniform_rate * horizon;
    // Only an astronomically long patience and threshold together get here.
    if !total_rate_time.is_finite() {
        return None;
    }
    // Splitting the horizon keeps exp(-rate*dt) representable for any horizon.
    let steps = (total_rate_time / MAX_STEP_RATE).ceil().max(1.0);
    let step_rate_time = total_rate_time / steps;
    let poisson = poisson_weights(step_rate_time, UNIFORMIZATION_EPS / steps);

    let advance: Vec<f64> = (0..=top)
        .map(|j| (all_busy_rate + j as f64 * abandon_rate) / uniform_rate)
        .collect();
    // The self-loop probability is written as (top - j)*theta/rate rather than 1 - exits so
    // it stays exact when theta is tiny.
    let stay: Vec<f64> = (0..=top)
        .map(|j| (top - j) as f64 * abandon_rate / uniform_rate)
        .collect();

    let mut waiting = start.to_vec();
    let mut answered = 0.0;
    let mut jumped = vec![0.0; waiting.len()];
    let mut next_waiting = vec![0.0; waiting.len()];
    let mut step = 0.0;
    while step < steps {
        step += 1.0;
        jumped.copy_from_slice(&waiting);
        let mut answered_in_jumps = 0.0;
        let mut answered_gain = 0.0;
        next_waiting.iter_mut().for_each(|x| *x = 0.0);
        for (k, &p) in poisson.iter().enumerate() {
            if k > 0 {
                // Walking down from the top, the mass moving one place down is carried
                // to the next state; what leaves state 0 is answered.
                let mut from_above = 0.0;
                for ((x, s), a) in jumped.iter_mut().zip(&stay).zip(&advance).rev() {
                    let moving_down = *x * a;
                    *x = *x * s + from_above;
                    from_above = moving_down;
                }
                answered_in_jumps += from_above;
            }
            for (acc, x) in next_waiting.iter_mut().zip(&jumped) {
                *acc += p * x;
            }
            answered_gain += p * answered_in_jumps;
        }
        answered += answered_gain;
        std::mem::swap(&mut waiting, &mut next_waiting);
        if waiting.iter().sum::<f64>() < DRAINED_EPS {
            break;
        }
    }
    Some(answered.clamp(0.0, 1.0))
}

/// The leading part of `start` outside which callers are answered within `threshold_s` with
/// total probability below `UNIFORMIZATION_EPS`.
///
/// From j ahead a caller needs j + 1 advances, each at a rate of at most r_j, so the count of
/// advances by T is dominated by Poisson(r_j * T), whose upper tail has the Chernoff bound
/// exp(-m) (e m / k)^k for k > m.
fn reachable_prefix(
    start: &[f64],
    all_busy_rate: f64,
    abandon_rate: f64,
    threshold_s: f64,
) -> &[f64] {
    let mut dropped = 0.0;
    let mut keep = start.len();
    for (ahead, &mass) in start.iter().enumerate().rev() {
        let mean = (all_busy_rate + ahead as f64 * abandon_rate) * threshold_s;
        let needed = (ahead + 1) as f64;
        let bound = if needed > mean {
            (-mean + needed * (1.0 + (mean / needed).ln()))
                .exp()
                .min(1.0)
        } else {
            1.0
        };
        dropped += mass * bound;
        if dropped >= UNIFORMIZATION_EPS {
            break;
        }
        keep = ahead;
    }
    start.get(..keep).unwrap_or(start)
}

/// Poisson(mean) probabilities from 0 up to the point where the remaining tail is below
/// `tail_eps`. The mean is at most `MAX_STEP_RATE`, so exp(-mean) does not underflow.
fn poisson_weights(mean: f64, tail_eps: f64) -> Vec<f64> {
    let mut weights = Vec::new();
    let mut p = (-mean).exp();
    weights.push(p);
    for k in 1..MAX_POISSON_TERMS {
        // Past the mean the ratios mean/k of successive terms keep falling, so the tail
        // after the last term kept is at most a geometric series in the next ratio.
        let ratio = mean / k as f64;
        if ratio < 1.0 && p * ratio / (1.0 - ratio) < tail_eps {
            break;
        }
        p *= ratio;
        weights.push(p);
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn model(arrival: f64, handle: f64, agents: u32, patience: Option<f64>, t: f64) -> QueueModel {
        QueueModel {
            arrival_per_s: arrival,
            handle_s_mean: handle,
            agents,
            patience_s_mean: patience,
            service_level_s: t,
        }
    }

    /// The textbook call-centre example: 360 calls per half hour, 240 s handle time.
    fn reference(agents: u32) -> QueueModel {
        model(0.2, 240.0, agents, None, 15.0)
    }

    /// Erlang B straight from its definition A^n/n! / sum A^k/k!, in log space.
    fn erlang_b_log_space(servers: u32, offered: f64) -> f64 {
        let mut log_terms = vec![0.0];
        let mut log_term = 0.0;
        for k in 1..=servers {
            log_term += offered.ln() - f64::from(k).ln();
            log_terms.push(log_term);
        }
        let max = log_terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = log_terms.iter().map(|t| (t - max).exp()).sum();
        (log_term - max - sum.ln()).exp()
    }

    #[test]
    fn erlang_b_known_values() {
        assert!(close(erlang_b(15, 8.108), 0.01, 1e-3));
        assert_eq!(erlang_b(0, 3.0), 1.0);
        assert_eq!(erlang_b(0, 0.0), 1.0);
        assert_eq!(erlang_b(5, 0.0), 0.0);
        assert_eq!(erlang_b(1, 1.0), 0.5);
        assert!(erlang_b(5, f64::NAN).is_nan());
        assert!(erlang_b(5, -1.0).is_nan());
        assert!(erlang_b(5, f64::INFINITY).is_nan());
    }

    #[test]
    fn erlang_b_sizing() {
        assert_eq!(erlang_b_servers_for(33.33, 0.01), Some(45));
        assert!(erlang_b(44, 33.33) > 0.01);
        assert!(erlang_b(45, 33.33) <= 0.01);
        assert_eq!(erlang_b_servers_for(10.0, 1.0), Some(0));
        assert_eq!(erlang_b_servers_for(0.0, 0.5), Some(1));
        assert_eq!(erlang_b_servers_for(10.0, 0.0), None);
        assert_eq!(erlang_b_servers_for(10.0, -0.1), None);
        assert_eq!(erlang_b_servers_for(10.0, f64::NAN), None);
        assert_eq!(erlang_b_servers_for(f64::NAN, 0.01), None);
    }

    #[test]
    fn erlang_b_big_pool_matches_log_space() {
        for (servers, offered) in [(15_000, 14_000.0), (200_000, 199_000.0), (2_000, 2_100.0)] {
            let b = erlang_b(servers, offered);
            let naive = erlang_b_log_space(servers, offered);
            assert!(b.is_finite() && b > 0.0 && b < 1.0);
            assert!(
                ((b - naive) / naive).abs() < 1e-9,
                "{servers} {offered}: {b} vs {naive}"
            );
        }
        assert!(erlang_b(15_000, 14_000.0) < 1e-3);
    }

    #[test]
    fn erlang_c_reference_call_centre() {
        let f = queue_figures(&reference(55)).unwrap();
        assert!(close(f.p_wait, 0.2387, 5e-4), "{f:?}");
        assert!(close(f.asa_s, 8.18, 0.01), "{f:?}");
        assert!(close(f.service_level, 0.846, 1e-3), "{f:?}");
        assert_eq!(f.abandoned_fraction, 0.0);
        assert_eq!(f.mean_wait_s, f.asa_s);
        assert!(close(f.occupancy, 48.0 / 55.0, 1e-15));
    }

    #[test]
    fn sizing_reference_call_centre() {
        let n = agents_for_service_level(&reference(0), 0.8).unwrap();
        assert!(queue_figures(&reference(n)).unwrap().service_level >= 0.8);
        assert!(queue_figures(&reference(n - 1)).unwrap().service_level < 0.8);
        assert_eq!(n, 55);
    }

    #[test]
    fn sizing_with_abandonment_matches_linear_scan() {
        let base = model(0.2, 240.0, 0, Some(60.0), 15.0);
        for target in [0.3, 0.8, 0.95] {
            let found = agents_for_service_level(&base, target).unwrap();
            let scanned = (1..200)
                .find(|&agents| {
                    queue_figures(&QueueModel { agents, ..base })
                        .unwrap()
                        .service_level
                        >= target
                })
                .unwrap();
            assert_eq!(found, scanned, "target {target}");
        }
    }

    #[test]
    fn invalid_inputs() {
        assert_eq!(queue_figures(&reference(0)), None);
        assert_eq!(queue_figures(&reference(48)), None);
        assert_eq!(queue_figures(&reference(47)), None);
        assert_eq!(queue_figures(&model(f64::NAN, 240.0, 55, None, 15.0)), None);
        assert_eq!(queue_figures(&model(0.2, 0.0, 55, None, 15.0)), None);
        assert_eq!(
            queue_figures(&model(0.2, f64::INFINITY, 55, None, 15.0)),
            None
        );
        assert_eq!(queue_figures(&model(0.2, 240.0, 55, None, -1.0)), None);
        assert_eq!(queue_figures(&model(0.2, 240.0, 55, None, f64::NAN)), None);
        assert_eq!(queue_figures(&model(0.2, 240.0, 55, Some(0.0), 15.0)), None);
        assert_eq!(
            queue_figures(&model(0.2, 240.0, 55, Some(f64::NAN), 15.0)),
            None
        );
        assert_eq!(queue_figures(&model(0.2, 240.0, 0, Some(60.0), 15.0)), None);
        assert_eq!(agents_for_service_level(&reference(0), f64::NAN), None);
        assert_eq!(agents_for_service_level(&reference(0), 0.0), None);
        assert_eq!(agents_for_service_level(&reference(0), 1.5), None);
        assert_eq!(agents_for_service_level(&reference(0), 1.0), None);
        assert_eq!(
            agents_for_service_level(&model(-1.0, 240.0, 0, None, 15.0), 0.8),
            None
        );
        // Threshold 0 is meaningful: only callers answered at once count.
        let f = queue_figures(&model(0.2, 240.0, 55, None, 0.0)).unwrap();
        assert!(close(f.service_level, 1.0 - f.p_wait, 1e-15));
        let f = queue_figures(&model(0.2, 240.0, 55, Some(60.0), 0.0)).unwrap();
        assert!(close(f.service_level, 1.0 - f.p_wait, 1e-15));
    }

    #[test]
    fn erlang_a_tends_to_erlang_c() {
        // The gap is first order in theta (it scales with theta times the squared queue
        // length over n*mu), so a thousandfold longer patience must shrink it a thousandfold.
        for (patience, rel_tol, abs_tol) in [(1e9, 1e-4, 1e-5), (1e12, 1e-7, 1e-8)] {
            for agents in [49, 55, 70] {
                let c = queue_figures(&reference(agents)).unwrap();
                let a = queue_figures(&QueueModel {
                    patience_s_mean: Some(patience),
                    ..reference(agents)
                })
                .unwrap();
                let rel = |x: f64, y: f64| (x - y).abs() / y.abs();
                assert!(rel(a.p_wait, c.p_wait) < rel_tol, "{a:?} {c:?}");
                assert!(rel(a.asa_s, c.asa_s) < rel_tol, "{a:?} {c:?}");
                assert!(rel(a.mean_wait_s, c.mean_wait_s) < rel_tol, "{a:?} {c:?}");
                assert!(
                    close(a.service_level, c.service_level, abs_tol),
                    "{a:?} {c:?}"
                );
                assert!(close(a.occupancy, c.occupancy, abs_tol), "{a:?} {c:?}");
                assert!(a.abandoned_fraction > 0.0 && a.abandoned_fraction < abs_tol);
            }
        }
    }

    /// Figures of an M/M/n+M queue by methods independent of the module's: a dense linear
    /// solve of the truncated generator for the stationary law, and RK4 integration of the
    /// tagged caller's forward equations for its answering time.
    fn brute_force(m: &QueueModel) -> QueueFigures {
        let size = 80;
        let n = m.agents as usize;
        let lambda = m.arrival_per_s;
        let mu = 1.0 / m.handle_s_mean;
        let theta = 1.0 / m.patience_s_mean.unwrap();
        let death = |k: usize| k.min(n) as f64 * mu + k.saturating_sub(n) as f64 * theta;

        // pi Q = 0 with sum(pi) = 1, as Q^T pi = 0 with the last row replaced by ones.
        let mut a = vec![vec![0.0; size + 1]; size];
        for k in 0..size {
            if k + 1 < size {
                a[k + 1][k] += lambda;
                a[k][k] -= lambda;
            }
            if k > 0 {
                a[k - 1][k] += death(k);
                a[k][k] -= death(k);
            }
        }
        a[size - 1][..size].fill(1.0);
        a[size - 1][size] = 1.0;
        for col in 0..size {
            let pivot = (col..size)
                .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
                .unwrap();
            a.swap(col, pivot);
            let pivot_row = a[col].clone();
            for (row, r) in a.iter_mut().enumerate() {
                if row != col {
                    let factor = r[col] / pivot_row[col];
                    for (x, p) in r.iter_mut().zip(&pivot_row).skip(col) {
                        *x -= factor * p;
                    }
                }
            }
        }
        let pi: Vec<f64> = (0..size).map(|k| a[k][size] / a[k][k]).collect();

        let p_below: f64 = pi[..n].iter().sum();
        let p_wait: f64 = pi[n..].iter().sum();
        let mean_queue: f64 = pi[n..].iter().enumerate().map(|(j, p)| j as f64 * p).sum();
        let busy: f64 = pi
            .iter()
            .enumerate()
            .map(|(k, p)| k.min(n) as f64 * p)
            .sum();

        // State: waiting mass by count ahead, then answered mass, then integral of t dAnswered.
        let queue_len = size - n;
        let rate = |j: usize| n as f64 * mu + j as f64 * theta;
        let deriv = |t: f64, y: &[f64]| -> Vec<f64> {
            let mut d = vec![0.0; queue_len + 2];
            for j in 0..queue_len {
                d[j] = -(rate(j) + theta) * y[j];
                if j + 1 < queue_len {
                    d[j] += rate(j + 1) * y[j + 1];
                }
            }
            d[queue_len] = rate(0) * y[0];
            d[queue_len + 1] = t * rate(0) * y[0];
            d
        };
        let mut y: Vec<f64> = pi[n..].to_vec();
        y.extend([0.0, 0.0]);
        let dt = 1e-3;
        let horizon_steps = 40_000;
        let threshold_step = (m.service_level_s / dt).round() as usize;
        let mut answered_by_t = 0.0;
        for s in 0..horizon_steps {
            if s == threshold_step {
                answered_by_t = y[queue_len];
            }
            let t = s as f64 * dt;
            let add = |y: &[f64], d: &[f64], h: f64| -> Vec<f64> {
                y.iter().zip(d).map(|(a, b)| a + h * b).collect()
            };
            let k1 = deriv(t, &y);
            let k2 = deriv(t + dt / 2.0, &add(&y, &k1, dt / 2.0));
            let k3 = deriv(t + dt / 2.0, &add(&y, &k2, dt / 2.0));
            let k4 = deriv(t + dt, &add(&y, &k3, dt));
            for i in 0..y.len() {
                y[i] += dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]);
            }
        }
        let p_answered = p_below + y[queue_len];
        QueueFigures {
            p_wait,
            asa_s: y[queue_len + 1] / p_answered,
            service_level: p_below + answered_by_t,
            abandoned_fraction: 1.0 - p_answered,
            mean_wait_s: mean_queue / lambda,
            occupancy: busy / n as f64,
        }
    }

    #[test]
    fn erlang_a_small_cases_match_brute_force() {
        for m in [
            model(0.8, 1.0, 1, Some(2.0), 1.5),
            model(1.5, 1.0, 1, Some(1.0), 0.7),
            model(2.5, 1.0, 3, Some(4.0), 2.0),
        ] {
            let fast = queue_figures(&m).unwrap();
            let slow = brute_force(&m);
            let tol = 1e-9;
            assert!(close(fast.p_wait, slow.p_wait, tol), "{fast:?} {slow:?}");
            assert!(close(fast.asa_s, slow.asa_s, tol), "{fast:?} {slow:?}");
            assert!(
                close(fast.service_level, slow.service_level, tol),
                "{fast:?} {slow:?}"
            );
            assert!(
                close(fast.abandoned_fraction, slow.abandoned_fraction, tol),
                "{fast:?} {slow:?}"
            );
            assert!(
                close(fast.mean_wait_s, slow.mean_wait_s, tol),
                "{fast:?} {slow:?}"
            );
            assert!(
                close(fast.occupancy, slow.occupancy, tol),
                "{fast:?} {slow:?}"
            );
        }
    }

    /// Service level by a closed form independent of uniformization. With a = n*mu/theta the
    /// Laplace transform of the wait V_j is prod (a+i)/(a+i+s/theta) = B(a+s/theta, j+1) /
    /// B(a, j+1), so exp(-theta*V_j) ~ Beta(a, j+1) and P(answered within T | j) =
    /// a/(a+j+1) * P(Beta(a+1, j+1) >= exp(-theta*T)). Successive j follow from
    /// I_x(p, q+1) = I_x(p, q) + x^p (1-x)^q / (q B(p, q)). The stationary law is redone in
    /// log space.
    fn service_level_via_beta(m: &QueueModel) -> f64 {
        let n = m.agents as usize;
        let lambda = m.arrival_per_s;
        let mu = 1.0 / m.handle_s_mean;
        let theta = 1.0 / m.patience_s_mean.unwrap();
        let death = |k: usize| k.min(n) as f64 * mu + k.saturating_sub(n) as f64 * theta;
        let mut log_w = vec![0.0];
        let mut max = 0.0f64;
        loop {
            let k = log_w.len();
            let next = log_w[k - 1] + (lambda / death(k)).ln();
            max = max.max(next);
            log_w.push(next);
            if k > n && next < max - 80.0 && lambda < death(k + 1) {
                break;
            }
        }
        let w: Vec<f64> = log_w.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = w.iter().sum();

        let a = n as f64 * mu / theta;
        let c = (-theta * m.service_level_s).exp();
        let log_one_minus_c = (-(-theta * m.service_level_s).exp_m1()).ln();
        let mut log_term = (a + 1.0) * c.ln();
        let mut cdf = log_term.exp();
        let mut sl: f64 = w[..n].iter().sum::<f64>() / total;
        for (j, wj) in w[n..].iter().enumerate() {
            if j > 0 {
                log_term += log_one_minus_c + (a + j as f64).ln() - (j as f64).ln();
                cdf += log_term.exp();
            }
            sl += wj / total * a / (a + j as f64 + 1.0) * (1.0 - cdf);
        }
        sl
    }

    #[test]
    fn uniformization_matches_beta_closed_form() {
        for m in [
            model(0.8, 1.0, 1, Some(2.0), 1.5),
            model(0.2, 240.0, 45, Some(60.0), 15.0),
            model(0.2, 240.0, 55, Some(60.0), 15.0),
            model(0.2, 240.0, 30, Some(10.0), 20.0),
            model(5.5, 180.0, 1000, Some(60.0), 20.0),
            model(6000.0 / 180.0, 180.0, 5000, Some(30.0), 20.0),
            model(4990.0 / 180.0, 180.0, 5000, Some(600.0), 60.0),
            model(0.2, 240.0, 50, Some(60.0), 5000.0),
        ] {
            let fast = queue_figures(&m).unwrap().service_level;
            let closed = service_level_via_beta(&m);
            assert!(close(fast, closed, 1e-12), "{m:?}: {fast} vs {closed}");
        }
    }

    #[test]
    fn endless_threshold_counts_every_answered_caller() {
        for t in [1e7, 1e300, f64::MAX] {
            let f = queue_figures(&model(0.2, 240.0, 45, Some(60.0), t)).unwrap();
            assert!(
                close(f.service_level, 1.0 - f.abandoned_fraction, 1e-12),
                "{f:?}"
            );
        }
    }

    #[test]
    fn abandonment_matches_little_identity() {
        for m in [
            model(0.8, 1.0, 1, Some(2.0), 1.5),
            model(0.2, 240.0, 40, Some(60.0), 15.0),
            model(0.2, 240.0, 55, Some(180.0), 15.0),
            model(5.5, 180.0, 1000, Some(60.0), 20.0),
            model(30.0, 180.0, 4000, Some(30.0), 20.0),
        ] {
            let f = queue_figures(&m).unwrap();
            let theta = 1.0 / m.patience_s_mean.unwrap();
            // Abandoners leave at rate theta per waiting caller, and mean_wait_s is E[Q]/lambda.
            let via_little = theta * f.mean_wait_s;
            assert!(
                close(f.abandoned_fraction, via_little, 1e-12 + 1e-10 * via_little),
                "{m:?}: {} vs {via_little}",
                f.abandoned_fraction
            );
            // Flow balance: answered callers keep the agents busy.
            let carried = (1.0 - f.abandoned_fraction) * m.arrival_per_s * m.handle_s_mean;
            assert!(close(
                f.occupancy * f64::from(m.agents),
                carried,
                1e-8 * carried
            ));
        }
    }

    #[test]
    fn more_agents_help() {
        let mut previous: Option<QueueFigures> = None;
        for agents in 20..90 {
            let f = queue_figures(&model(0.2, 240.0, agents, Some(60.0), 15.0)).unwrap();
            if let Some(p) = previous {
                assert!(f.service_level > p.service_level - 1e-12, "{agents}");
                assert!(
                    f.abandoned_fraction < p.abandoned_fraction + 1e-12,
                    "{agents}"
                );
                assert!(f.asa_s < p.asa_s + 1e-12, "{agents}");
                assert!(f.p_wait < p.p_wait + 1e-12, "{agents}");
            }
            previous = Some(f);
        }
    }

    #[test]
    fn large_erlang_a_is_sane() {
        for m in [
            model(5.5, 180.0, 1000, Some(60.0), 20.0),
            model(5000.0 / 180.0, 180.0, 5000, Some(30.0), 20.0),
            model(6000.0 / 180.0, 180.0, 5000, Some(30.0), 20.0),
            model(0.5, 180.0, 5000, Some(30.0), 20.0),
        ] {
            let f = queue_figures(&m).unwrap();
            assert!(f.p_wait >= 0.0 && f.p_wait <= 1.0, "{f:?}");
            assert!(f.service_level >= 1.0 - f.p_wait - 1e-12, "{f:?}");
            assert!(f.service_level <= 1.0, "{f:?}");
            assert!(
                f.abandoned_fraction >= 0.0 && f.abandoned_fraction < 1.0,
                "{f:?}"
            );
            assert!(f.asa_s >= 0.0 && f.asa_s < 60.0, "{f:?}");
            assert!(f.mean_wait_s >= 0.0, "{f:?}");
            assert!(f.occupancy > 0.0 && f.occupancy <= 1.0, "{f:?}");
        }
    }

    #[test]
    fn erlang_c_large_pool() {
        let f = queue_figures(&model(4900.0 / 180.0, 180.0, 5000, None, 20.0)).unwrap();
        assert!(f.p_wait > 0.0 && f.p_wait < 1.0, "{f:?}");
        assert!(f.service_level > 0.0 && f.service_level < 1.0, "{f:?}");
    }
}
